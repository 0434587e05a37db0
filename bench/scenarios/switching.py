"""Scenario 4: LoRA switching on a loaded model, A -> B -> A -> none, stock LoraLoader vs Hearth's swapper.

Each fresh ComfyUI renders the base image first (that prompt loads the checkpoint), then runs the switch
sequence once; the sides take turns, one process at a time. Per step: the LoRA node's time, the prompt's
end-to-end time, whether the LoRA is used for the first time in the process, whether ComfyUI served the
checkpoint loader from its cache (the base model was not rebuilt), whether the image equals the base image
(after "none" it must: the patches were undone), and a hash of the pixels (stock's and Hearth's must match).
"""

from __future__ import annotations

import hashlib

from harness.server import ComfyServer, Run

from .fixture import LOADER_ID, LORAS, SIDES, SWAPPER_ID, Bench, txt2img_graph
from .loading import timed_run

SEQUENCE = (("A", LORAS[0]), ("B", LORAS[1]), ("A", LORAS[0]), ("none", None))
SEQUENCE_NAMES = [name for _, name in SEQUENCE]


def lora_node_seconds(run: Run) -> float | None:
    """Time of the LoRA node(s): Hearth's swapper "8", or the stock chain "8.1", "8.2", ...; None if none ran."""
    times = [s for node, s in run.node_seconds().items() if node == SWAPPER_ID or node.startswith(SWAPPER_ID + ".")]
    return sum(times) if times else None


def loader_was_cached(run: Run) -> bool:
    return any(LOADER_ID in e.get("nodes", []) for e in run.events("execution_cached"))


def _sha(image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def _step(server: ComfyServer, side: str, label: str, name: str | None, base, first_use: bool) -> dict:
    import numpy as np

    loras = [(name, 1.0, 1.0)] if name else []
    run, wall = timed_run(server, txt2img_graph(side, loras=loras, prefix=label))
    image = run.pixels()
    return {"lora": label, "first_use": first_use, "node_s": lora_node_seconds(run), "prompt_s": wall,
            "nodes": run.node_seconds(), "loader_cached": loader_was_cached(run),
            "equals_base": bool(np.array_equal(image, base)), "pixels_sha256": _sha(image),
            "hearth_loads": [{k: e.get(k) for k in ("status", "seconds", "patches_reused")}
                             for e in run.hearth_loads()]}


def one_process(bench: Bench, side: str) -> dict:
    """A fresh ComfyUI: the base image (this prompt loads the checkpoint), then A -> B -> A -> none."""
    with bench.running(side) as server:
        run, wall = timed_run(server, txt2img_graph(side, loras=[], prefix="base"))
        base = run.pixels()
        steps = [_step(server, side, label, name, base, first_use=name not in SEQUENCE_NAMES[:i])
                 for i, (label, name) in enumerate(SEQUENCE)]
    return {"base_prompt_s": wall, "base_sha256": _sha(base), "steps": steps}


def switching(bench: Bench, repeats: int) -> dict:
    """`repeats` fresh processes per side, the sides taking turns (a noisy neighbour hits both alike); one
    process at a time, since a LoRA-patched stock process alone peaks at ~2.7x the checkpoint."""
    out: dict = {side: {"processes": [], "steps": []} for side in SIDES}
    for _ in range(repeats):
        for side in SIDES:
            one = one_process(bench, side)
            out[side]["processes"].append({k: v for k, v in one.items() if k != "steps"})
            out[side]["steps"] += one["steps"]
    return out
