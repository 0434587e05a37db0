"""The cacheable files under the allowed folders, for the standalone panel's model picker.

ComfyUI's sidebar offers the names ComfyUI lists; the daemon's own page has no ComfyUI to ask, but the
daemon knows its allowed roots. Each file is named relative to the root it was found under (what a user
recognises: `sdxl/base.safetensors`), with the path a preload sends. Folder links are followed, as ComfyUI
follows them, with each real folder walked once (a link to a parent cannot loop); a file whose real path
leads out of every root is left out, since the daemon would refuse it. Blocking: run it in a thread.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from ..core.model_files import is_cached_kind, walk_once

MAX_FILES = 5000  # a folder tree larger than this is cut, and the answer says so


def _within(path: str, roots: list[str]) -> bool:
    for r in roots:
        try:
            if os.path.commonpath([path, r]) == r:
                return True
        except ValueError:
            continue
    return False


def list_models(roots: list[str], limit: int = MAX_FILES) -> dict:
    """{"roots": [{"root", "files": [{"name", "path", "real", "size"}]}], "truncated": bool}, names sorted."""
    out: list[dict[str, Any]] = []
    seen_dirs: set[str] = set()
    count, truncated = 0, False
    for root in roots:
        files: list[dict[str, Any]] = []
        for folder, dirs, names in walk_once(root, seen_dirs):
            # real folders before links to folders, so a folder is named by its own name where it has one
            dirs[:] = sorted((d for d in dirs if not d.startswith(".")),
                             key=lambda d: (os.path.islink(os.path.join(folder, d)), d))
            for n in sorted(names):
                if n.startswith(".") or not is_cached_kind(n):
                    continue
                path = os.path.join(folder, n)
                real = os.path.realpath(path)
                try:
                    st = os.stat(real)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode) or not _within(real, roots):
                    continue
                if count >= limit:
                    truncated = True
                    break
                count += 1
                files.append({"name": os.path.relpath(path, root), "path": path, "real": real,
                              "size": st.st_size})
            if truncated:
                break
        out.append({"root": root, "files": sorted(files, key=lambda f: f["name"].lower())})
        if truncated:
            break
    return {"roots": out, "truncated": truncated}
