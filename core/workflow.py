"""Which model files a ComfyUI graph names: a pure reading of a workflow, without ComfyUI.

Used by the queue's prefetch inside ComfyUI (nodes/prefetch.py) and by `hearth preload --workflow`, which
has no ComfyUI. Two formats:
- API: what POST /prompt carries and "Export (API)" saves, `{node_id: {"class_type", "inputs"}}`; an input
  is a literal or a link `[source_id, output_index]` (the frontend expands subgraphs into ids like "12:5");
- UI: what the editor saves, `{"nodes": [{"id", "type", "mode", "widgets_values", ...}], "links", ...,
  "definitions": {"subgraphs": [{"nodes": [...]}]}}`; a node's widget values are a list in the order of
  its widgets (or, for some nodes, a dict by input name).

A model is named by a (class_type, input) pair, never by an input name alone: `clip_name` is a text
encoder for CLIPLoader and a CLIP vision model for CLIPVisionLoader. The table holds ComfyUI's own loaders
(read in ComfyUI 0.3.64, 0.13 and 0.28) and Hearth's, with each input's folder and its place among the
node's widgets. Values that are no file (VAELoader's "taesd" and "pixel_space", an empty "None" slot) are
left out: only names with a model file's extension count.
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from .model_files import is_cached_kind, is_pickle

# class_type -> ((input, folder, widget index), ...)
LOADERS: dict[str, tuple[tuple[str, str, int], ...]] = {
    "CheckpointLoaderSimple": (("ckpt_name", "checkpoints", 0),),
    "CheckpointLoader": (("ckpt_name", "checkpoints", 1),),  # after config_name
    "unCLIPCheckpointLoader": (("ckpt_name", "checkpoints", 0),),
    "ImageOnlyCheckpointLoader": (("ckpt_name", "checkpoints", 0),),
    "UNETLoader": (("unet_name", "diffusion_models", 0),),
    "CLIPLoader": (("clip_name", "text_encoders", 0),),
    "DualCLIPLoader": tuple((f"clip_name{i}", "text_encoders", i - 1) for i in (1, 2)),
    "TripleCLIPLoader": tuple((f"clip_name{i}", "text_encoders", i - 1) for i in (1, 2, 3)),
    "QuadrupleCLIPLoader": tuple((f"clip_name{i}", "text_encoders", i - 1) for i in (1, 2, 3, 4)),
    "CLIPVisionLoader": (("clip_name", "clip_vision", 0),),
    "VAELoader": (("vae_name", "vae", 0),),
    "LoraLoader": (("lora_name", "loras", 0),),
    "LoraLoaderModelOnly": (("lora_name", "loras", 0),),
    "ControlNetLoader": (("control_net_name", "controlnet", 0),),
    "DiffControlNetLoader": (("control_net_name", "controlnet", 0),),  # its MODEL is a link, not a widget
    "UpscaleModelLoader": (("model_name", "upscale_models", 0),),
    "StyleModelLoader": (("style_model_name", "style_models", 0),),
    "GLIGENLoader": (("gligen_name", "gligen", 0),),
    "HearthCheckpointLoader": (("ckpt_name", "checkpoints", 0),),
    # the first version's fixed slots lora_1..lora_4, still in saved graphs (nodes/lora.py); now: STACKS
    "HearthLoraSwapper": tuple((f"lora_{i}", "loras", 3 * (i - 1)) for i in (1, 2, 3, 4)),
}
# Loaders whose one input (widget 0) is a stack of rows {"on", "lora", ...}: class_type -> (input, folder).
STACKS: dict[str, tuple[str, str]] = {"HearthLoraSwapper": ("loras", "loras")}
HEARTH_LOADERS = frozenset({"HearthCheckpointLoader", "HearthLoraSwapper"})
STOCK_LOADERS = frozenset(LOADERS) - HEARTH_LOADERS

# Names that a folder of each kind has on disk in ComfyUI's tree and in extra_model_paths' a111 section,
# lower case: how `hearth preload --workflow` tells which allowed folder holds a kind without ComfyUI.
FOLDER_DIRS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints", "stable-diffusion"),
    "diffusion_models": ("diffusion_models", "unet"),
    "text_encoders": ("text_encoders", "clip"),
    "clip_vision": ("clip_vision",),
    "vae": ("vae",),
    "loras": ("loras", "lora", "lycoris"),
    "controlnet": ("controlnet", "t2i_adapter"),
    "upscale_models": ("upscale_models", "esrgan", "realesrgan", "swinir"),
    "style_models": ("style_models",),
    "gligen": ("gligen",),
}

UI_SKIPPED_MODES = (2, 4)  # muted ("never") and bypassed nodes do not run
_MAX_HOPS = 8


@dataclass(frozen=True)
class ModelRef:
    """One model file a loader names: ComfyUI's folder and the name relative to it, and where it was."""

    folder: str
    name: str
    node: str
    class_type: str
    input: str


class WorkflowError(ValueError):
    """The file is not a ComfyUI workflow of either format."""


def is_model_name(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and (is_cached_kind(value) or is_pickle(value))


def is_ui_format(graph: Any) -> bool:
    return isinstance(graph, dict) and isinstance(graph.get("nodes"), list)


def models_in(graph: Any, classes: Container[str] = frozenset(LOADERS)) -> list[ModelRef]:
    """Every model file the loaders of `classes` name in an API- or UI-format graph, once each (the first
    node naming it), in the graph's order."""
    if is_ui_format(graph):
        refs = _ui_models(graph, classes)
    elif isinstance(graph, dict) and isinstance(graph.get("prompt"), dict):
        refs = _api_models(graph["prompt"], classes)  # a whole POST /prompt body
    elif isinstance(graph, dict) and graph and all(isinstance(n, dict) and "class_type" in n
                                                   for n in graph.values()):
        refs = _api_models(graph, classes)
    else:
        raise WorkflowError("not a ComfyUI workflow: neither the editor's format (a \"nodes\" list) nor the "
                            "API format (nodes with a \"class_type\")")
    seen, out = set(), []
    for r in refs:
        if (r.folder, r.name) not in seen:
            seen.add((r.folder, r.name))
            out.append(r)
    return out


def read_workflow(path: str | Path) -> Any:
    """A workflow file's JSON (a PNG's embedded workflow is not read: save the workflow as JSON)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WorkflowError(f"{path} is not a JSON workflow ({e})") from None


def _stack_names(value: Any) -> list[str]:
    """The files of a stack's rows that are on; the API format may wrap the rows as {"__value__": rows}."""
    rows = value.get("__value__") if isinstance(value, dict) else value
    return [r["lora"] for r in rows if isinstance(r, dict) and r.get("on", True)
            and is_model_name(r.get("lora"))] if isinstance(rows, list) else []


def _api_models(prompt: dict, classes: Container[str]) -> Iterator[ModelRef]:
    for node_id, node in prompt.items():
        if not isinstance(node, dict):
            continue
        class_type = node.get("class_type")
        inputs = node.get("inputs")
        if class_type not in classes or class_type not in LOADERS or not isinstance(inputs, dict):
            continue
        for name, folder, _ in LOADERS[class_type]:
            value = _literal(prompt, inputs.get(name))
            if is_model_name(value):
                yield ModelRef(folder, value, str(node_id), class_type, name)
        if class_type in STACKS:
            name, folder = STACKS[class_type]
            for value in _stack_names(inputs.get(name)):
                yield ModelRef(folder, value, str(node_id), class_type, name)


def _literal(prompt: dict, value: Any) -> Any:
    """A literal input, or the one literal a linked node holds (a primitive node feeding a widget)."""
    for _ in range(_MAX_HOPS):
        if not (isinstance(value, list) and len(value) == 2):
            return value
        source = prompt.get(str(value[0]))
        if not isinstance(source, dict) or not isinstance(source.get("inputs"), dict):
            return None
        literals = [v for v in source["inputs"].values() if isinstance(v, str)]
        links = [v for v in source["inputs"].values() if isinstance(v, list)]
        if len(literals) == 1 and not links:
            return literals[0]
        if len(links) == 1 and not literals:
            value = links[0]  # a reroute-like pass-through
            continue
        return None
    return None


def _ui_nodes(workflow: dict) -> Iterator[dict]:
    yield from workflow.get("nodes") or []
    definitions = workflow.get("definitions")
    subgraphs = definitions.get("subgraphs") if isinstance(definitions, dict) else None
    for sub in subgraphs if isinstance(subgraphs, list) else []:
        if isinstance(sub, dict) and isinstance(sub.get("nodes"), list):
            yield from sub["nodes"]


def _ui_models(workflow: dict, classes: Container[str]) -> Iterator[ModelRef]:
    for node in _ui_nodes(workflow):
        if not isinstance(node, dict) or node.get("mode") in UI_SKIPPED_MODES:
            continue
        class_type = node.get("type")
        if class_type not in classes or class_type not in LOADERS:
            continue
        values = node.get("widgets_values")
        for name, folder, index in LOADERS[class_type]:
            if isinstance(values, dict):
                value = values.get(name)
            elif isinstance(values, list) and index < len(values):
                value = values[index]
            else:
                value = None
            if is_model_name(value):
                yield ModelRef(folder, value, str(node.get("id")), class_type, name)
        if class_type in STACKS and isinstance(values, (list, dict)) and values:
            name, folder = STACKS[class_type]
            for value in _stack_names(values.get(name) if isinstance(values, dict) else values[0]):
                yield ModelRef(folder, value, str(node.get("id")), class_type, name)
