"""The pack importable as `comfyui_hearth` from this checkout, the way ComfyUI finds it: by its folder.

Nobody pip-installs the pack in a ComfyUI install (DESIGN section 12), so neither do the tests and
benchmarks: a folder of our own holds one symlink, `comfyui_hearth -> the repository`, and goes first on
sys.path and on PYTHONPATH, so that this process and every child it starts (`python -m comfyui_hearth.cli`,
subprocess clients) import this very checkout. ComfyUI's own processes get their PYTHONPATH from
checkout.comfy_env, without this folder: there, the pack is a folder in custom_nodes/ and nothing more.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

from . import REPO

NAME = "comfyui_hearth"


def import_root() -> Path:
    """The folder whose `comfyui_hearth` entry is this checkout (made once per user and checkout)."""
    tag = hashlib.blake2b(str(REPO).encode(), digest_size=4).hexdigest()
    root = Path(tempfile.gettempdir()) / f"hearth-pack-{os.getuid()}-{tag}"
    root.mkdir(mode=0o700, exist_ok=True)
    if root.stat().st_uid != os.getuid() or root.is_symlink():
        raise RuntimeError(f"{root} is not this user's own folder")
    link = root / NAME
    if not (link.is_symlink() and Path(os.readlink(link)) == REPO):
        tmp = root / f".{NAME}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(REPO, target_is_directory=True)
        os.replace(tmp, link)  # atomic: a concurrent run sees the old link or the new, never none
    return root


def make_importable() -> Path:
    """Put import_root() first on sys.path and PYTHONPATH (once); refuses when another comfyui_hearth is
    already imported here, since two copies of the pack in one process would make a test lie."""
    root = str(import_root())
    loaded = sys.modules.get(NAME)
    if loaded is not None and Path(loaded.__file__).resolve().parent != REPO:
        raise RuntimeError(f"{NAME} was imported from {loaded.__file__} before the harness could point it "
                           f"at {REPO}")
    if root not in sys.path:
        sys.path.insert(0, root)
    parts = os.environ.get("PYTHONPATH", "").split(os.pathsep) if os.environ.get("PYTHONPATH") else []
    if root not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *parts])
    return Path(root)
