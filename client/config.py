"""The daemon's settings as this process reads them (GET /v1/config): what the pack's nodes follow.

The daemon's config.json is the one home of the user's settings; a ComfyUI process asks for them instead of
reading the file, so a value the daemon refused or rewrote (or HEARTH_BUDGET) is what the nodes see too.
"""

from __future__ import annotations

from .load import _connect


def daemon_config() -> dict:
    """Every setting of the user's daemon (starting it where this process keeps it); raises the daemon's
    typed errors, DaemonUnavailable when it is down."""
    return _connect().get("/v1/config")
