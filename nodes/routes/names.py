"""ComfyUI's names for model files, both ways: the name a request gives -> its path, a daemon path -> its name.

The browser only ever deals in (folder, name) as ComfyUI lists them; paths stay between ComfyUI and the
daemon. Only names that `folder_paths` lists resolve, so a request cannot reach a file ComfyUI does not offer.
"""

from __future__ import annotations

import os
import threading
import time

from ...core.errors import BadRequest, NotFound
from ...core.model_files import CACHED_EXTS, is_cached_kind

FOLDERS = ("checkpoints", "loras")
INDEX_TTL_S = 10.0  # a model added to a folder gets its name in answers within this long


def model_path(body: dict) -> str:
    """The full path of the model a request names by {"folder", "name"}; anything else is refused."""
    import folder_paths

    if "path" in body or "paths" in body:
        raise BadRequest("the /hearth/ routes take a model's folder and name, never a path")
    folder, name = body.get("folder"), body.get("name")
    if folder not in FOLDERS:
        raise BadRequest(f"folder must be one of {', '.join(FOLDERS)}")
    if not isinstance(name, str) or not name:
        raise BadRequest("name must be a model name as ComfyUI lists it")
    if not is_cached_kind(name):
        raise BadRequest(f"only {', '.join(CACHED_EXTS)} files are cached, not {name!r}")
    if name not in folder_paths.get_filename_list(folder):
        raise NotFound(f"ComfyUI lists no {folder} model named {name!r}")
    full = folder_paths.get_full_path(folder, name)
    if not full:
        raise NotFound(f"{folder}/{name} is no longer on disk")
    return full


def listed() -> dict[str, list[str]]:
    """The cacheable files ComfyUI lists, by folder."""
    import folder_paths

    return {f: [n for n in folder_paths.get_filename_list(f) if is_cached_kind(n)] for f in FOLDERS}


def model_roots() -> list[str]:
    """ComfyUI's model folders (real paths) that exist: what the daemon must allow for these names."""
    import folder_paths

    return sorted({os.path.realpath(p) for f in FOLDERS for p in folder_paths.get_folder_paths(f)
                   if os.path.isdir(p)})


class NameIndex:
    """Real path -> (folder, name) for the files ComfyUI lists, rebuilt at most every INDEX_TTL_S."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._map: dict[str, tuple[str, str]] = {}
        self._built = float("-inf")

    def lookup(self, path: str) -> tuple[str | None, str]:
        """The folder and name of `path`; (None, its base name) for a file ComfyUI does not list."""
        with self._lock:
            if time.monotonic() - self._built > INDEX_TTL_S:
                self._map = self._build()
                self._built = time.monotonic()
            found = self._map.get(path)
        return found if found else (None, os.path.basename(path))

    @staticmethod
    def _build() -> dict[str, tuple[str, str]]:
        import folder_paths

        out: dict[str, tuple[str, str]] = {}
        for folder in FOLDERS:
            for name in folder_paths.get_filename_list(folder):
                full = folder_paths.get_full_path(folder, name)
                if full:
                    out.setdefault(os.path.realpath(full), (folder, name))
        return out
