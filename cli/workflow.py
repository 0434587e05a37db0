"""`hearth preload --workflow FILE`: the files a saved workflow names, found without ComfyUI.

A workflow names models relative to ComfyUI's model folders ("checkpoints", "loras", ...). The CLI has no
ComfyUI, so it looks for each name under the daemon's allowed folders (those ComfyUI processes registered
while the daemon runs, config `model_dirs`, HEARTH_MODEL_DIRS). A root that is the folder of the name's
kind (ComfyUI registers `.../models/checkpoints`), or a models folder holding one (`.../models` with a
`checkpoints` or `Stable-diffusion` inside), is preferred to a root of no known kind holding a file of
that name; the folder of another kind is never looked in. Two different files equally preferred make the
name ambiguous, and both are preloaded (ComfyUI will pick one of them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..core.workflow import FOLDER_DIRS, ModelRef


@dataclass
class Found:
    ref: ModelRef
    paths: list[str] = field(default_factory=list)  # real paths, best match first; several: ambiguous

    @property
    def label(self) -> str:
        """How the name is printed: ComfyUI's folder and the name in it."""
        return f"{self.ref.folder}/{self.ref.name}"


def _kind_dirs(root: str, folder: str) -> list[str]:
    """Folders of this kind at or right inside `root`, by name."""
    names = FOLDER_DIRS.get(folder, (folder,))
    out = [root] if os.path.basename(root.rstrip(os.sep)).lower() in names else []
    try:
        with os.scandir(root) as it:
            out += [e.path for e in it if e.is_dir() and e.name.lower() in names]
    except OSError:
        pass
    return out


def _kind_of(root: str) -> str | None:
    name = os.path.basename(root.rstrip(os.sep)).lower()
    return next((kind for kind, names in FOLDER_DIRS.items() if name in names), None)


def locate(ref: ModelRef, roots: list[str]) -> Found:
    """The files under `roots` that `ref` may name: those in a folder of its kind, else any root's."""
    parts = ref.name.replace("\\", "/").split("/")
    if ".." in parts or os.path.isabs(ref.name):
        return Found(ref)  # a name that leaves its folder is none ComfyUI would list
    rel = os.path.join(*parts)
    ranked: dict[str, int] = {}
    for root in roots:
        kinds = _kind_dirs(root, ref.folder)
        # Any other root may hold the name too, unless it is the folder of another kind (a LoRA of the same
        # name as a checkpoint is not that checkpoint).
        other = [] if kinds or _kind_of(root) is not None else [(1, root)]
        for rank, base in [(0, d) for d in kinds] + other:
            path = os.path.join(base, rel)
            if os.path.isfile(path):
                real = os.path.realpath(path)
                ranked[real] = min(rank, ranked.get(real, rank))
    if not ranked:
        return Found(ref)
    best = min(ranked.values())
    return Found(ref, sorted(p for p, r in ranked.items() if r == best))
