"""The per-user token that every request to the daemon carries (a 0600 file in HEARTH_HOME)."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from .errors import Unauthorized
from .home import ensure_home, hearth_home


def token_path() -> Path:
    return hearth_home() / "token"


def create_token() -> str:
    """Return the user's token, creating it (0600) on first use; refuse a file others can read."""
    path = ensure_home() / "token"
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
        raise Unauthorized(f"no token file at {path}: the daemon has never started for this HEARTH_HOME") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise Unauthorized(f"token file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                           f"run: chmod 600 {path}")
    if st.st_uid != os.getuid():
        raise Unauthorized(f"token file {path} belongs to another user")
    return path.read_text().strip()
