"""Which model files Hearth caches and which it only loads: one list of extensions for every room."""

from __future__ import annotations

# Byte-exact segments are made of these (.sft is the same format under a shorter name).
CACHED_EXTS = (".safetensors", ".sft")
# Pickles: loaded with torch.load(weights_only=True) in the caller's process, never cached or unpickled freely.
PICKLE_EXTS = (".ckpt", ".pt", ".pth", ".bin")


def is_cached_kind(name: str) -> bool:
    """Whether a file of this name is one Hearth keeps in shared memory."""
    return name.lower().endswith(CACHED_EXTS)


def is_pickle(name: str) -> bool:
    return name.lower().endswith(PICKLE_EXTS)
