"""Where Hearth keeps its per-user state (HEARTH_HOME) and how it reads and writes it safely."""

from __future__ import annotations

import json
import math
import os
import secrets
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import Unauthorized


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


def shm_dir() -> Path:
    """The tmpfs that holds segments (overridable for tests on systems with another tmpfs)."""
    return Path(os.environ.get("HEARTH_SHM_DIR", "/dev/shm"))


def shm_space() -> tuple[int, int]:
    """(total, free) bytes of the segments' tmpfs; raises OSError where it does not exist."""
    st = os.statvfs(shm_dir())
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def write_json_atomic(path: Path, data: Any, mode: int = 0o600) -> None:
    """Write JSON to a temporary file beside `path`, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_json(path: Path, default: Any = None) -> Any:
    """Read a JSON file; a missing or unreadable file gives `default` (state files are caches of facts)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError, OSError):
        return default


def token_path() -> Path:
    return hearth_home() / "token"


def create_token() -> str:
    """Return the user's token, creating it (0600) on first use; refuse a file others can read."""
    home = ensure_home()
    path = home / "token"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_token()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32))
    return read_token()


def read_token() -> str:
    """Read the token; raises Unauthorized if it is missing or readable by group or others."""
    path = token_path()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise Unauthorized(f"no token file at {path}: start the daemon once (hearth daemon)") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise Unauthorized(f"token file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                           f"run: chmod 600 {path}")
    if st.st_uid != os.getuid():
        raise Unauthorized(f"token file {path} belongs to another user")
    return path.read_text().strip()


def daemon_info_path(env: Mapping[str, str] | None = None) -> Path:
    return hearth_home(env) / "daemon.json"


_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40,
          "TIB": 1 << 40}


def parse_size(text: str | int | float, total: int | None = None) -> int:
    """Parse '12G', '512MiB', '1.5GB', '40%' (of `total`) or a byte count into bytes."""
    if isinstance(text, (int, float)):
        return int(text)
    s = str(text).strip().upper().replace(" ", "")
    if s.endswith("%"):
        if total is None:
            raise ValueError(f"a percentage ({text}) needs a total to be taken of")
        pct = float(s[:-1])
        if not 0 < pct <= 100:
            raise ValueError(f"percentage out of range: {text}")
        return int(total * pct / 100)
    num = s.rstrip("KMGTIB")
    unit = s[len(num):]
    try:
        if unit not in _UNITS or not num:
            raise ValueError
        value = float(num)
        if not math.isfinite(value):  # 'inf' and 'nan' parse as floats
            raise ValueError
    except ValueError:
        raise ValueError(f"not a size: {text!r} (examples: 12G, 512M, 40%, 1073741824)") from None
    if value < 0:
        raise ValueError(f"negative size: {text}")
    return int(value * _UNITS[unit])


def format_size(n: float) -> str:
    """Human-readable bytes, binary units."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
