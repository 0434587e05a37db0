"""Who a holder is, in words: "ComfyUI (pid 1234)" rather than a bare pid, for the panel, the tray and events.

Every ComfyUI and most other clients are a `python` process, so psutil's process name alone says little: a
Python's script or module names it instead, and a script `main.py` beside ComfyUI's `comfy/` package and
`execution.py` is ComfyUI (a git checkout, comfy-cli's and the desktop app's installs all run it that way).
Labels are kept per process (pid and start time, so a reused pid is asked again); a label is trusted for
RECHECK_S before its pid's start time is read again: an acquire names its process in its event, and that
read (psutil parsing /proc/PID/stat) was a tenth of a loaded daemon's loop.
"""

from __future__ import annotations

import os
import time

import psutil

_labels: dict[tuple[int, float], str] = {}
_recent: dict[int, tuple[float, str]] = {}  # pid -> (when its start time was last read, its label)
MAX_KEPT = 256
RECHECK_S = 5.0
_PY_OPTIONS_WITH_VALUE = {"-X", "-W"}


def _program(proc: psutil.Process) -> str:
    """The name a user knows the process by."""
    cmd = proc.cmdline()
    name = proc.name()
    if not cmd or not (os.path.basename(cmd[0]).startswith("python") or name.startswith("python")):
        return name or "process"
    args = iter(cmd[1:])
    for arg in args:
        if arg in _PY_OPTIONS_WITH_VALUE:
            next(args, None)
        elif arg == "-m":
            module = next(args, "")
            return "Hearth" if module.startswith("comfyui_hearth") else module or "python"
        elif arg == "-c":
            return "python -c"
        elif not arg.startswith("-"):
            script = arg if os.path.isabs(arg) else os.path.join(proc.cwd(), arg)
            folder = os.path.dirname(script)
            if (os.path.basename(script) == "main.py" and os.path.isdir(os.path.join(folder, "comfy"))
                    and os.path.isfile(os.path.join(folder, "execution.py"))):
                return "ComfyUI"
            return os.path.basename(script)
    return "python"


def label(pid: int) -> str:
    """"<program> (pid N)"; just "pid N" for a process that is gone or not ours to inspect."""
    now = time.monotonic()
    recent = _recent.get(pid)
    if recent is not None and now - recent[0] < RECHECK_S:
        return recent[1]
    found = _label(pid)
    if len(_recent) >= MAX_KEPT:
        _recent.clear()
    _recent[pid] = (now, found)
    return found


def _label(pid: int) -> str:
    try:
        proc = psutil.Process(pid)
        stamp = (pid, proc.create_time())
        found = _labels.get(stamp)
        if found is None:
            found = f"{_program(proc)} (pid {pid})"
            if len(_labels) >= MAX_KEPT:
                _labels.clear()
            _labels[stamp] = found
        return found
    except (psutil.Error, OSError):
        return f"pid {pid}"
