"""Where Hearth keeps its per-user state (HEARTH_HOME) and its segments (the tmpfs)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def hearth_home(env: Mapping[str, str] | None = None) -> Path:
    """The state folder: $HEARTH_HOME, else $XDG_CONFIG_HOME/hearth, else ~/.config/hearth."""
    env = os.environ if env is None else env
    if env.get("HEARTH_HOME"):
        return Path(env["HEARTH_HOME"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "hearth"


def ensure_home(env: Mapping[str, str] | None = None) -> Path:
    """Create the state folder with mode 0700 if needed and return it."""
    home = hearth_home(env)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(home, 0o700)
    return home


def daemon_info_path(env: Mapping[str, str] | None = None) -> Path:
    """daemon.json: the running daemon's pid, port, version and protocol, written when it is ready."""
    return hearth_home(env) / "daemon.json"


def shm_dir() -> Path:
    """The tmpfs that holds segments (overridable for tests on systems with another tmpfs)."""
    return Path(os.environ.get("HEARTH_SHM_DIR", "/dev/shm"))


def shm_space() -> tuple[int, int]:
    """(total, free) bytes of the segments' tmpfs; raises OSError where it does not exist."""
    st = os.statvfs(shm_dir())
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
