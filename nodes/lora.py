"""Hearth LoRA Swapper: a stack of LoRAs in one node, tensors from the shared cache, base model untouched.

The stack is one input, `loras`: a list of rows {"on", "lora", "strength_model", "strength_clip"}, which
the node's frontend script (web/lora_stack.js) draws as rows the user adds, removes, reorders and turns on
and off. In API format the frontend sends it as {"__value__": [rows]} (ComfyUI reads a bare list as a link,
and unwraps the value before the node runs). Saved graphs of the first version carry four fixed slots,
lora_1..lora_4 with strength_model_N and strength_clip_N: declared hidden here, so such API graphs still
run (the frontend shows no hidden input) and the script turns the old UI widgets into rows.
"""

from __future__ import annotations

import math
import time

import folder_paths

from .lora_patches import apply, patch_set
from .sources import fetch
from .status import nothing_loaded, report

NONE = "None"
LEGACY_SLOTS = 4  # lora_1..lora_4 of the first version's fixed stack
ROW_KEYS = ("on", "lora", "strength_model", "strength_clip")
STRENGTH = (-100.0, 100.0)  # LoraLoader's range


class StackError(ValueError):
    """A `loras` value that is not a stack of rows; the message says which row and what is wrong."""


def _strength(row: dict, key: str, where: str) -> float:
    value = row.get(key, 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StackError(f"{where}: {key} must be a number, got {value!r}")
    if not STRENGTH[0] <= value <= STRENGTH[1]:
        raise StackError(f"{where}: {key} {value} is outside {STRENGTH[0]:g}..{STRENGTH[1]:g}")
    return float(value)


def rows(loras: object = None, **legacy: object) -> list[tuple[bool, str, float, float]]:
    """The stack as (on, name, strength_model, strength_clip), in order; from `loras` or the old slots."""
    old = {k: v for k, v in legacy.items() if k.startswith(("lora_", "strength_model_", "strength_clip_"))}
    if old:
        if loras is not None:
            raise StackError("give the stack either as loras or as the old lora_1..lora_4 inputs, not both")
        return [(True, str(old[f"lora_{i}"]), _strength(old, f"strength_model_{i}", f"slot {i}"),
                 _strength(old, f"strength_clip_{i}", f"slot {i}"))
                for i in range(1, LEGACY_SLOTS + 1) if old.get(f"lora_{i}", NONE) != NONE]
    if loras is None:
        return []
    if not isinstance(loras, list):
        raise StackError(f"loras must be a list of rows {{{', '.join(ROW_KEYS)}}}, got {type(loras).__name__}")
    out = []
    for n, row in enumerate(loras, 1):
        where = f"LoRA row {n}"
        if not isinstance(row, dict):
            raise StackError(f"{where} must be an object with {', '.join(ROW_KEYS)}, got {row!r}")
        unknown = sorted(set(row) - set(ROW_KEYS))
        if unknown:  # a typo such as "strength" would otherwise silently mean 1.0
            raise StackError(f"{where}: unknown field {', '.join(unknown)} (fields: {', '.join(ROW_KEYS)})")
        on, name = row.get("on", True), row.get("lora")
        if not isinstance(on, bool) or not isinstance(name, str):
            raise StackError(f"{where}: on must be true or false and lora a file name, got {on!r}, {name!r}")
        out.append((on, name, _strength(row, "strength_model", where), _strength(row, "strength_clip", where)))
    return out


def _legacy_inputs() -> dict:
    spec = {}
    for i in range(1, LEGACY_SLOTS + 1):
        spec.update({f"lora_{i}": ("STRING",), f"strength_model_{i}": ("FLOAT",), f"strength_clip_{i}": ("FLOAT",)})
    return spec


class HearthLoraSwapper:
    """Applies a stack of LoRAs to MODEL and CLIP, each row that is on as LoraLoader would, in row order.

    Patches go on clones, as in `comfy.sd.load_lora_for_models`: the input models are never modified, so
    a switch of LoRAs is a different patch set on the same base, and an empty stack returns the inputs.
    """

    CATEGORY = "Hearth"
    RETURN_TYPES = ("MODEL", "CLIP")
    OUTPUT_TOOLTIPS = ("The diffusion model with the LoRAs applied.", "The CLIP model with the LoRAs applied.")
    FUNCTION = "apply"
    DESCRIPTION = ("Applies a stack of LoRAs like chained Load LoRA nodes, with the LoRA files read from "
                   "Hearth's shared cache. Add, remove, reorder and turn rows on and off; switching LoRAs "
                   "reloads neither the files nor the base model.")
    SEARCH_ALIASES = ["hearth", "lora", "lora stack", "load lora", "lora swapper", "power lora"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL", {"tooltip": "The diffusion model the LoRAs will be applied to."}),
                             "clip": ("CLIP", {"tooltip": "The CLIP model the LoRAs will be applied to."})},
                "optional": {"loras": ("HEARTH_LORA_STACK", {
                    "default": [], "socketless": True,
                    "tooltip": "The LoRAs, applied top to bottom: each row a LoRA file, on or off, and its "
                               "strengths on the model and on CLIP."})},
                "hidden": {"unique_id": "UNIQUE_ID", **_legacy_inputs()}}

    @classmethod
    def VALIDATE_INPUTS(cls, **inputs) -> bool | str:
        """Refuse a malformed stack, or a row that is on with a LoRA that is not in the loras folders, before
        the prompt runs (as ComfyUI refuses a LoraLoader's missing file). A row that is off is not checked."""
        try:
            stack = rows(**inputs)
        except StackError as e:
            return str(e)
        known = set(folder_paths.get_filename_list("loras"))
        missing = [name for on, name, _, _ in stack if on and name != NONE and name not in known]
        return f"LoRA not in the loras folders: {', '.join(missing)}" if missing else True

    def apply(self, model, clip, loras: list | None = None, unique_id: str | None = None, **legacy) -> tuple:
        applied = 0
        for on, name, strength_model, strength_clip in rows(loras, **legacy):
            if not on or name == NONE or (strength_model == 0 and strength_clip == 0):
                continue  # LoraLoader returns its inputs for zero strengths too
            applied += 1
            t0 = time.perf_counter()
            loaded = fetch("loras", name)
            patches, reused = patch_set(model, clip, loaded.key, loaded.tensors)
            model, clip = apply(model, clip, name, patches, strength_model, strength_clip)
            report(type(self).__name__, unique_id, "lora", name, loaded, time.perf_counter() - t0,
                   patches_reused=reused)
        if not applied:
            nothing_loaded(unique_id, "no LoRA applied: the model and CLIP pass through")
        return (model, clip)
