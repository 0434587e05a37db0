"""Hearth LoRA Swapper: a stack of LoRAs in one node, tensors from the shared cache, base model untouched."""

from __future__ import annotations

import logging
import time
import weakref
from collections import OrderedDict

import comfy.lora
import comfy.lora_convert
import folder_paths

from ..client import Loaded
from .sources import fetch
from .status import report

log = logging.getLogger("hearth.nodes")

SLOTS = 4
NONE = "None"
# Patch sets kept for switching back: each holds its LoRA's segment mapped (shared pages, no private copy).
KEPT_PATCH_SETS = 8
_patch_sets: OrderedDict[tuple, tuple] = OrderedDict()


def _ref(obj) -> weakref.ref | None:
    return None if obj is None else weakref.ref(obj)


def _patch_set(model, clip, loaded: Loaded) -> tuple[dict, bool]:
    """ComfyUI's patches of this LoRA for this base: its key map, key conversion and weight adapters.

    That is ~30 ms of the ~35 ms `comfy.sd.load_lora_for_models` spends on a 300 MB SD1.5 LoRA, so the
    result is kept per (segment, diffusion model, text encoder): the segment's key changes with the file,
    and the base objects are compared by identity through weak references, so a dropped base never
    matches a newer one that reuses its address. Fallback loads (no key) are never kept. Returns the
    patches and whether they were kept from an earlier run.
    """
    diffusion = None if model is None else model.model
    encoder = None if clip is None else clip.cond_stage_model
    for k in [k for k, (d, e, _) in _patch_sets.items() if (d and d() is None) or (e and e() is None)]:
        del _patch_sets[k]  # their base is gone
    key = (loaded.key, id(diffusion), id(encoder))
    kept = _patch_sets.get(key) if loaded.key else None
    if kept is not None:
        _patch_sets.move_to_end(key)
        return kept[2], True
    key_map: dict = {}
    if diffusion is not None:
        key_map = comfy.lora.model_lora_keys_unet(diffusion, key_map)
    if encoder is not None:
        key_map = comfy.lora.model_lora_keys_clip(encoder, key_map)
    # A fresh dict: ComfyUI's conversion may rename keys in the dict it is given.
    patches = comfy.lora.load_lora(comfy.lora_convert.convert_lora(dict(loaded.tensors)), key_map)
    if loaded.key:
        _patch_sets[key] = (_ref(diffusion), _ref(encoder), patches)
        while len(_patch_sets) > KEPT_PATCH_SETS:
            _patch_sets.popitem(last=False)
    return patches, False


def _apply(model, clip, name: str, patches: dict, strength_model: float, strength_clip: float) -> tuple:
    """Clones of MODEL and CLIP carrying the patches, as `comfy.sd.load_lora_for_models` returns them."""
    applied: set = set()
    if model is not None:
        model = model.clone()
        applied.update(model.add_patches(patches, strength_model))
    if clip is not None:
        clip = clip.clone()
        applied.update(clip.add_patches(patches, strength_clip))
    unused = [k for k in patches if k not in applied]
    if unused:
        log.warning("Hearth LoRA %s: %d keys match no layer of this model, e.g. %s", name, len(unused),
                    unused[0])
    return model, clip


class HearthLoraSwapper:
    """Applies up to SLOTS LoRAs to MODEL and CLIP, each as LoraLoader would, in slot order.

    Patches go on clones, as in `comfy.sd.load_lora_for_models`: the input models are never modified, so
    a switch of LoRAs is a different patch set on the same base, and an empty stack returns the inputs.
    """

    CATEGORY = "Hearth"
    RETURN_TYPES = ("MODEL", "CLIP")
    OUTPUT_TOOLTIPS = ("The diffusion model with the LoRAs applied.", "The CLIP model with the LoRAs applied.")
    FUNCTION = "apply"
    DESCRIPTION = ("Applies a stack of LoRAs like chained Load LoRA nodes, with the LoRA files read from "
                   "Hearth's shared cache. Switching LoRAs reloads neither the files nor the base model.")
    SEARCH_ALIASES = ["hearth", "lora", "lora stack", "load lora", "lora swapper"]

    @classmethod
    def INPUT_TYPES(cls):
        names = [NONE] + folder_paths.get_filename_list("loras")
        strength = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}
        required = {"model": ("MODEL", {"tooltip": "The diffusion model the LoRAs will be applied to."}),
                    "clip": ("CLIP", {"tooltip": "The CLIP model the LoRAs will be applied to."})}
        for i in range(1, SLOTS + 1):
            required[f"lora_{i}"] = (names, {"default": NONE, "tooltip": f"LoRA in slot {i} (None: empty)."})
            required[f"strength_model_{i}"] = ("FLOAT", {**strength, "tooltip": "Strength on the model."})
            required[f"strength_clip_{i}"] = ("FLOAT", {**strength, "tooltip": "Strength on CLIP."})
        return {"required": required, "hidden": {"unique_id": "UNIQUE_ID"}}

    def apply(self, model, clip, unique_id: str | None = None, **slots) -> tuple:
        for i in range(1, SLOTS + 1):
            name = slots[f"lora_{i}"]
            strength_model, strength_clip = slots[f"strength_model_{i}"], slots[f"strength_clip_{i}"]
            if name == NONE or (strength_model == 0 and strength_clip == 0):
                continue  # LoraLoader returns its inputs for zero strengths too
            t0 = time.perf_counter()
            loaded = fetch("loras", name)
            patches, reused = _patch_set(model, clip, loaded)
            model, clip = _apply(model, clip, name, patches, strength_model, strength_clip)
            report(type(self).__name__, unique_id, "lora", name, loaded, time.perf_counter() - t0,
                   patches_reused=reused)
        return (model, clip)
