"""The pack as users install it, made from this checkout: a clone's files, the registry's archive, an older copy.

- `pack_tree`: the files a commit of the working tree would hold (tracked and new, not ignored), as a fresh git
  repository: what `git clone` of the published repository gives, and where `comfy node pack` runs.
- `registry_archive`: `comfy node pack` (comfy-cli, the registry's own packer, a test dependency) in that tree:
  the zip the Comfy Registry serves and ComfyUI-Manager and `comfy node install` unpack into custom_nodes/.
- `older_copy`: the pack's files with an older version: the daemon a user ran before updating the pack.
Nothing here reaches the network: comfy-cli runs with a private HOME and telemetry off (DO_NOT_TRACK).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from . import REPO

PACK_NAME = "comfyui-hearth"  # the folder name the registry and the README's git clone give the pack
DEV_ONLY = ("tests", "bench", "harness", ".ci")  # never part of an installed pack (.comfyignore agrees)


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout


def working_files() -> list[str]:
    """Paths (relative) of the working tree's files as a commit of it would hold them."""
    listed = _git(REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    return sorted(p for p in set(listed) if p and (REPO / p).is_file() and not (REPO / p).is_symlink())


def pack_tree(dest: Path) -> Path:
    """A git repository at `dest` holding the working tree's files in one commit."""
    for rel in working_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    _git(dest, "init", "-q")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", "the working tree")
    return dest


def comfy_cli() -> Path | None:
    """The `comfy` command: beside this Python, on PATH, or in the checkout's dev environment (dev.sh)."""
    for candidate in (Path(sys.executable).parent / "comfy", shutil.which("comfy"), REPO / ".venv" / "bin" / "comfy"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def run_comfy_cli(tree: Path, *args: str, home: Path) -> subprocess.CompletedProcess:
    """`comfy --skip-prompt ARGS` in `tree`, with `home` as HOME (its config) and telemetry off."""
    comfy = comfy_cli()
    if comfy is None:
        raise FileNotFoundError("comfy-cli is not installed (pip install comfy-cli; it is in the test extra)")
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(home), "DO_NOT_TRACK": "1", "COMFY_NO_TELEMETRY": "1", "NO_COLOR": "1"}
    env.pop("XDG_CONFIG_HOME", None)
    return subprocess.run([str(comfy), "--skip-prompt", *args], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=300)


def registry_archive(tree: Path, home: Path) -> Path:
    """`comfy node pack` in `tree` (a pack_tree): the registry's zip."""
    r = run_comfy_cli(tree, "node", "pack", home=home)
    if r.returncode != 0:
        raise RuntimeError(f"comfy node pack failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return tree / "node.zip"


def unpack(archive: Path, folder: Path) -> Path:
    """The archive's files in `folder` (custom_nodes/comfyui-hearth), as the Manager and `comfy node install` do."""
    with zipfile.ZipFile(archive) as z:
        z.extractall(folder)
        for info in z.infolist():  # zip keeps the executable bit in the upper bits of external_attr
            mode = info.external_attr >> 16
            if mode and not info.is_dir():
                os.chmod(folder / info.filename, mode & 0o777)
    return folder


def older_copy(dest: Path, version: str = "0.0.1") -> Path:
    """The pack's files (no tests, no benchmarks) under `dest`, claiming an older version."""
    for rel in working_files():
        if rel.split("/")[0] in DEV_ONLY:
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    v = dest / "core" / "version.py"
    v.write_text(v.read_text().replace('__version__ = "', f'__version__ = "{version}"  # was "', 1))
    return dest
