"""The `hearth` command as the install at hand offers it, for every message that tells the user what to run.

pip installs a `hearth` console script; ComfyUI's custom_nodes install (a git clone, the registry's archive)
has none, only the launcher file in the pack's folder: `python <pack>/hearth.py`. A message that names a
command nobody can run is worse than none.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

PACK_DIR = Path(__file__).resolve().parents[1]
LAUNCHER = PACK_DIR / "hearth.py"


def launcher_argv(*args: str) -> list[str]:
    """argv that runs `hearth ARGS` from this pack's own folder with this Python, wherever it is installed."""
    return [sys.executable, str(LAUNCHER), *args]


@functools.cache
def hearth_command() -> str:
    """`hearth` where the console script on PATH runs this very pack, else `<python> <pack>/hearth.py`."""
    if _console_script_is_ours():
        return "hearth"
    return f"{_python()} {_short(LAUNCHER)}"


def hint(args: str) -> str:
    """A command line to show the user: `hearth_command() args`, e.g. hint("daemon")."""
    return f"{hearth_command()} {args}"


def _console_script_is_ours() -> bool:
    """The `hearth` on PATH is pip's script of this Python's environment, and that environment's
    comfyui_hearth is this folder (a custom_nodes copy beside a pip install may be another version)."""
    script = shutil.which("hearth")
    if script is None:
        return False
    try:
        if not os.path.samefile(os.path.dirname(script), os.path.dirname(sys.executable)):
            return False
        with open(script, "rb") as f:
            if b"comfyui_hearth" not in f.read(4096):
                return False
    except OSError:
        return False
    installed = _installed_pack()
    try:
        return installed is not None and installed.resolve() == PACK_DIR
    except OSError:
        return False


def _installed_pack() -> Path | None:
    """Where this Python's pip-installed comfyui-hearth lives (an editable install: its source folder)."""
    try:
        dist = importlib.metadata.distribution("comfyui-hearth")
    except importlib.metadata.PackageNotFoundError:
        return None
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        direct = {}
    if direct.get("dir_info", {}).get("editable") and str(direct.get("url", "")).startswith("file:"):
        return Path(unquote(urlparse(direct["url"]).path))
    return Path(str(dist.locate_file("comfyui_hearth")))


def _python() -> str:
    """This interpreter as the user can type it: `python3`/`python` where PATH finds this very one."""
    for name in ("python3", "python"):
        found = shutil.which(name)
        try:
            if (found and os.path.dirname(os.path.abspath(found)) == os.path.dirname(sys.executable)
                    and os.path.samefile(found, sys.executable)):
                return name
        except OSError:
            continue
    return _short(Path(sys.executable))


def _short(path: Path) -> str:
    """A path for a command line: under the home folder as ~/..., quoted where the shell needs it."""
    text = str(path)
    home = os.path.expanduser("~")
    if home not in ("", "/") and text.startswith(home + os.sep):
        return "~/" + shlex.quote(text[len(home) + 1:])
    return shlex.quote(text)
