"""Hearth's ComfyUI nodes (V1 node API). The only package of Hearth that imports ComfyUI."""

from . import routes  # noqa: F401 - the panel's /hearth/ routes and event relay (inside ComfyUI's server)
from .checkpoint import HearthCheckpointLoader
from .lora import HearthLoraSwapper
from .vram import HearthVRAMBudget

NODE_CLASS_MAPPINGS = {
    "HearthCheckpointLoader": HearthCheckpointLoader,
    "HearthLoraSwapper": HearthLoraSwapper,
    "HearthVRAMBudget": HearthVRAMBudget,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "HearthCheckpointLoader": "Hearth Checkpoint Loader",
    "HearthLoraSwapper": "Hearth LoRA Swapper",
    "HearthVRAMBudget": "Hearth VRAM Budget",
}
