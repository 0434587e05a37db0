"""Hearth Checkpoint Loader: CheckpointLoaderSimple's inputs and outputs, weights from the shared cache."""

from __future__ import annotations

import time

import folder_paths

from .build import build_checkpoint
from .sources import fetch, safetensors_metadata
from .status import report


class HearthCheckpointLoader:
    """Loads a checkpoint's tensors from Hearth's shared memory and builds MODEL, CLIP and VAE from them."""

    CATEGORY = "Hearth"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = ("The model used for denoising latents.",
                       "The CLIP model used for encoding text prompts.",
                       "The VAE model used for encoding and decoding images to and from latent space.")
    FUNCTION = "load_checkpoint"
    DESCRIPTION = ("Loads a checkpoint like Load Checkpoint, from Hearth's shared cache: near-instant when "
                   "warm, one copy of the weights for every ComfyUI process. Falls back to a normal load.")
    SEARCH_ALIASES = ["hearth", "load checkpoint", "checkpoint", "cached checkpoint"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),
                                           {"tooltip": "The name of the checkpoint (model) to load."})},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    def load_checkpoint(self, ckpt_name: str, unique_id: str | None = None) -> tuple:
        t0 = time.perf_counter()
        loaded = fetch("checkpoints", ckpt_name)
        # The segment's header was read and validated already; only a fallback load reads the file's.
        metadata = loaded.metadata if loaded.cached else safetensors_metadata(loaded.path)
        out = build_checkpoint(loaded.tensors, metadata, folder_paths.get_folder_paths("embeddings"))
        report(type(self).__name__, unique_id, "checkpoint", ckpt_name, loaded, time.perf_counter() - t0)
        return out
