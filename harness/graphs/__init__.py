"""The API-format graphs of the tests and benchmarks, set up for a run, and their stock twins.

Each <name>_api.json in this folder is what POST /prompt takes for the UI graph example_workflows/<name>.json
(ComfyUI's templates browser lists those; a UI graph cannot be queued as it is): the same node ids, links and
widget values, which tests/comfy/test_workflows.py checks. The stock twin swaps the pack's nodes for
CheckpointLoaderSimple and a chain of LoraLoaders, so a run can be compared with stock ComfyUI's.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
LORA_SLOTS = 4  # nodes/lora.py SLOTS; the graphs carry all of them

Lora = tuple[str, float, float]  # name, strength_model, strength_clip


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
        stack = list(loras or [])
        if len(stack) > LORA_SLOTS:
            raise ValueError(f"at most {LORA_SLOTS} LoRAs")
        for i in range(1, LORA_SLOTS + 1):
            name, sm, sc = stack[i - 1] if i <= len(stack) else ("None", 1.0, 1.0)
            n["inputs"].update({f"lora_{i}": name, f"strength_model_{i}": sm, f"strength_clip_{i}": sc})
    for n in _nodes(g, "EmptyLatentImage"):
        n["inputs"].update(width=size, height=size)
    for n in _nodes(g, "KSampler"):
        n["inputs"].update(steps=steps, seed=seed)
    for n in _nodes(g, "SaveImage"):
        n["inputs"]["filename_prefix"] = prefix
    return g


def to_stock(graph: dict) -> dict:
    """The same graph with ComfyUI's own nodes: CheckpointLoaderSimple, and one LoraLoader per used slot."""
    g = copy.deepcopy(graph)
    for n in _nodes(g, "HearthCheckpointLoader"):
        n["class_type"] = "CheckpointLoaderSimple"
    for node_id in [k for k, n in g.items() if n["class_type"] == "HearthLoraSwapper"]:
        swapper = g.pop(node_id)
        inputs = swapper["inputs"]
        model, clip = inputs["model"], inputs["clip"]
        for i in range(1, LORA_SLOTS + 1):
            name = inputs[f"lora_{i}"]
            if name == "None":
                continue
            loader_id = f"{node_id}.{i}"
            g[loader_id] = {"class_type": "LoraLoader", "inputs": {
                "model": model, "clip": clip, "lora_name": name,
                "strength_model": inputs[f"strength_model_{i}"], "strength_clip": inputs[f"strength_clip_{i}"]}}
            model, clip = [loader_id, 0], [loader_id, 1]
        for n in g.values():  # rewire the swapper's consumers to the end of the chain
            for k, v in n["inputs"].items():
                if isinstance(v, list) and v[0] == node_id:
                    n["inputs"][k] = model if v[1] == 0 else clip
    return g
