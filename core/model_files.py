"""Which model files Hearth caches and which it only loads: one list of extensions for every room; and how
the model folders are walked."""

from __future__ import annotations

import os
from collections.abc import Iterator

# Byte-exact segments are made of these (.sft is the same format under a shorter name).
CACHED_EXTS = (".safetensors", ".sft")
# Pickles: loaded with torch.load(weights_only=True) in the caller's process, never cached or unpickled freely.
PICKLE_EXTS = (".ckpt", ".pt", ".pth", ".bin")


def is_cached_kind(name: str) -> bool:
    """Whether a file of this name is one Hearth keeps in shared memory."""
    return name.lower().endswith(CACHED_EXTS)


def is_pickle(name: str) -> bool:
    return name.lower().endswith(PICKLE_EXTS)


def walk_once(root: str, seen: set[str]) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk(root) following folder links, as ComfyUI follows the model folders users link in, skipping
    every real folder already in `seen` and adding those it walks: across roots that share `seen` each real
    folder is walked once, and a link to a parent cannot loop. `dirs` may be pruned in place, as with os.walk."""
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        yield folder, dirs, names
