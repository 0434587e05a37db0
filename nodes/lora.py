"""Hearth LoRA Swapper: a stack of LoRAs in one node, tensors from the shared cache, base model untouched."""

from __future__ import annotations

import time

import folder_paths

from .lora_patches import apply, patch_set
from .sources import fetch
from .status import report

SLOTS = 4
NONE = "None"


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
            patches, reused = patch_set(model, clip, loaded.key, loaded.tensors)
            model, clip = apply(model, clip, name, patches, strength_model, strength_clip)
            report(type(self).__name__, unique_id, "lora", name, loaded, time.perf_counter() - t0,
                   patches_reused=reused)
        return (model, clip)
