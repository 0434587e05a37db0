"""Which files the daemon may serve: model files under the allowed folders, named by absolute paths.

The allowed folders (roots) are the `model_dirs` setting, HEARTH_MODEL_DIRS, and the model folders that
ComfyUI processes register while the daemon runs (kept in memory only). Loop thread only.
"""

from __future__ import annotations

import os
from typing import Any

from ..core.errors import BadRequest, NotAllowed, SourceChanged
from ..core.model_files import CACHED_EXTS, is_cached_kind
from . import segments
from .segments import SourceId
from .settings import Settings


def real_path(path: Any) -> str:
    """The real path of an absolute path a request gave.

    Relative paths are refused: resolved here they would name a file under the daemon's working folder, not
    the caller's, which can be another file with the same relative name (a wrong tensor). Clients resolve
    paths in their own process. A string with a NUL byte or a lone surrogate would make os calls raise.
    """
    if not isinstance(path, str) or not path or "\0" in path:
        raise BadRequest("path must be a non-empty string without NUL bytes")
    try:
        os.fsencode(path)
    except UnicodeEncodeError:  # JSON's \ud800 escape: a lone surrogate that no file name can hold
        raise BadRequest(f"{path!r} holds a character no file name can hold (a lone surrogate)") from None
    if not os.path.isabs(path):
        raise BadRequest(f"{path}: the daemon takes absolute paths only (a relative path would be looked up "
                         f"in the daemon's working folder, not yours)")
    try:
        return os.path.realpath(path)
    except OSError as e:  # a link removed while realpath read it: the path is changing under us
        raise SourceChanged(f"{path} changed while it was being resolved ({e.strerror})") from None


def _within(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:
        return False


class Roots:
    def __init__(self, settings: Settings):
        self._settings = settings
        self._registered: set[str] = set()

    def all(self) -> list[str]:
        return sorted(self.origins())

    def origins(self) -> dict[str, str]:
        """Each allowed folder and where it comes from: config.json, HEARTH_MODEL_DIRS and/or ComfyUI
        (registered), joined by ", " where several name it."""
        env = [p for p in os.environ.get("HEARTH_MODEL_DIRS", "").split(os.pathsep) if p]
        found: dict[str, list[str]] = {p: ["ComfyUI"] for p in self._registered}
        for where, paths in (("config.json", self._settings["model_dirs"]), ("HEARTH_MODEL_DIRS", env)):
            for p in paths:
                found.setdefault(os.path.realpath(os.path.expanduser(p)), []).insert(0, where)
        return {p: ", ".join(dict.fromkeys(ws)) for p, ws in found.items()}

    def add(self, roots: Any) -> None:
        """Allow model folders a ComfyUI process registers (existing directories only)."""
        if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
            raise BadRequest("roots must be a list of folder paths")
        for r in roots:
            try:
                real = os.path.realpath(r)
            except ValueError:  # a NUL byte or a lone surrogate: no folder has that name
                continue
            if os.path.isdir(real):
                self._registered.add(real)

    def resolve(self, path: Any) -> SourceId:
        """The identity of an allowed model file, or a typed error saying why it is not allowed.

        The identity is taken from the file opened, not the name checked: a symlink or rename planted
        between the two (to lead out of the allowed folders, or to another file) is caught by
        `segments.identify`, and the fill serves only the inode identified here.
        """
        real = real_path(path)
        # The real file's name or the name given: the Hugging Face cache keeps models as blobs without an
        # extension behind `snapshots/<rev>/model.safetensors` links. (The root check uses the real path.)
        if not (is_cached_kind(real) or is_cached_kind(path)):
            raise NotAllowed(f"{path}: only {', '.join(CACHED_EXTS)} files are cached")
        if not any(_within(real, r) for r in self.all()):
            raise NotAllowed(f"{path} is outside the allowed model folders; add its folder with "
                             f"`hearth config model_dirs PATH` or HEARTH_MODEL_DIRS")
        return segments.identify(real, path)
