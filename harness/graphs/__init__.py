"""The API-format graphs of the tests and benchmarks, set up for a run, and their stock twins.

Each <name>_api.json in this folder is what POST /prompt takes for the UI graph example_workflows/<name>.json
(ComfyUI's templates browser lists those; a UI graph cannot be queued as it is): the same node ids, links and
widget values, which tests/comfy/test_workflows.py checks. The stock twin swaps the pack's nodes for
CheckpointLoaderSimple and a chain of LoraLoaders, so a run can be compared with stock ComfyUI's.

The swapper's stack is its `loras` input, as the frontend sends it: {"__value__": [row, ...]}, each row
{"on", "lora", "strength_model", "strength_clip"} (nodes/lora.py). Graphs saved before the stack had rows
carry the four fixed slots lora_1..lora_4; `legacy_stack` writes that shape, and to_stock reads both.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
LEGACY_SLOTS = 4  # nodes/lora.py LEGACY_SLOTS: the fixed stack of the first version

# name, strength_model, strength_clip[, on (default True)]
Lora = tuple[str, float, float] | tuple[str, float, float, bool]


def load(name: str) -> dict:
    """harness/graphs/<name>.json (e.g. "hearth_txt2img_api")."""
    return json.loads((HERE / f"{name}.json").read_text())


def txt2img(ckpt: str, loras: list[Lora] | None = None, **settings: int | str) -> dict:
    """The txt2img graph, or the LoRA-stack one when `loras` is a list (empty: the swapper with no LoRA),
    set up by configure() with `settings` (size, steps, seed, prefix)."""
    name = "hearth_txt2img_api" if loras is None else "hearth_lora_stack_api"
    return configure(load(name), ckpt, loras, **settings)


def _nodes(graph: dict, class_type: str) -> list[dict]:
    return [n for n in graph.values() if n["class_type"] == class_type]


def configure(graph: dict, ckpt: str, loras: list[Lora] | None = None, size: int = 64, steps: int = 4,
              seed: int = 42, prefix: str = "hearth") -> dict:
    """A copy of `graph` with this checkpoint, LoRA stack (for graphs with a swapper), size, steps and seed."""
    g = copy.deepcopy(graph)
    for n in _nodes(g, "HearthCheckpointLoader"):
        n["inputs"]["ckpt_name"] = ckpt
    for n in _nodes(g, "HearthLoraSwapper"):
        n["inputs"] = {k: v for k, v in n["inputs"].items() if k in ("model", "clip")}
        n["inputs"]["loras"] = {"__value__": [_row(lora) for lora in loras or []]}
    for n in _nodes(g, "EmptyLatentImage"):
        n["inputs"].update(width=size, height=size)
    for n in _nodes(g, "KSampler"):
        n["inputs"].update(steps=steps, seed=seed)
    for n in _nodes(g, "SaveImage"):
        n["inputs"]["filename_prefix"] = prefix
    return g


def _row(lora: Lora) -> dict:
    name, sm, sc, *on = lora
    return {"on": on[0] if on else True, "lora": name, "strength_model": sm, "strength_clip": sc}


def legacy_stack(graph: dict, loras: list[Lora]) -> dict:
    """A copy of `graph` whose swappers carry `loras` in the first version's four slots (rows that are on)."""
    stack = [lora[:3] for lora in loras if len(lora) < 4 or lora[3]]
    if len(stack) > LEGACY_SLOTS:
        raise ValueError(f"the old stack had {LEGACY_SLOTS} slots")
    g = copy.deepcopy(graph)
    for n in _nodes(g, "HearthLoraSwapper"):
        n["inputs"] = {k: v for k, v in n["inputs"].items() if k in ("model", "clip")}
        for i in range(1, LEGACY_SLOTS + 1):
            name, sm, sc = stack[i - 1] if i <= len(stack) else ("None", 1.0, 1.0)
            n["inputs"].update({f"lora_{i}": name, f"strength_model_{i}": sm, f"strength_clip_{i}": sc})
    return g


def stack_of(inputs: dict) -> list[Lora]:
    """The LoRAs a swapper's inputs apply, in order (rows that are on; the old slots that name one)."""
    if "loras" in inputs:
        value = inputs["loras"]
        rows = value["__value__"] if isinstance(value, dict) else value
        return [(r["lora"], r.get("strength_model", 1.0), r.get("strength_clip", 1.0)) for r in rows
                if r.get("on", True) and r["lora"] != "None"]
    return [(inputs[f"lora_{i}"], inputs[f"strength_model_{i}"], inputs[f"strength_clip_{i}"])
            for i in range(1, LEGACY_SLOTS + 1) if inputs.get(f"lora_{i}", "None") != "None"]


def to_stock(graph: dict) -> dict:
    """The same graph with ComfyUI's own nodes: CheckpointLoaderSimple, and one LoraLoader per applied row."""
    g = copy.deepcopy(graph)
    for n in _nodes(g, "HearthCheckpointLoader"):
        n["class_type"] = "CheckpointLoaderSimple"
    for node_id in [k for k, n in g.items() if n["class_type"] == "HearthLoraSwapper"]:
        swapper = g.pop(node_id)
        inputs = swapper["inputs"]
        model, clip = inputs["model"], inputs["clip"]
        for i, (name, strength_model, strength_clip) in enumerate(stack_of(inputs), 1):
            loader_id = f"{node_id}.{i}"
            g[loader_id] = {"class_type": "LoraLoader", "inputs": {
                "model": model, "clip": clip, "lora_name": name,
                "strength_model": strength_model, "strength_clip": strength_clip}}
            model, clip = [loader_id, 0], [loader_id, 1]
        for n in g.values():  # rewire the swapper's consumers to the end of the chain
            for k, v in n["inputs"].items():
                if isinstance(v, list) and v[0] == node_id:
                    n["inputs"][k] = model if v[1] == 0 else clip
    return g
