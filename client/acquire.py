"""Waiting for an acquire without ever hanging on a daemon that stopped working.

An acquire answers when its fill ends: milliseconds for a hit, a minute for a cold 23 GB file, so no fixed
timeout fits. Instead, while the answer is outstanding, the daemon is asked for its status every few
seconds: as long as it answers and some fill moves (ours, or the ones ours queues behind), we wait. When it
neither answers nor moves for `stall_seconds()`, the load gives up on the cache and loads the stock way.
"""

from __future__ import annotations

import logging
import os
import time

from ..core.errors import DaemonStalled, HearthError
from .connection import Connection

log = logging.getLogger("hearth.client")

PROBE_S = 2.0  # how often a waiting client looks at the daemon, and how long one look may take
DEFAULT_STALL_S = 30.0


def stall_seconds() -> float:
    """How long the daemon may go without answering or filling before a load stops waiting for it."""
    try:
        return max(float(os.environ.get("HEARTH_STALL_S", DEFAULT_STALL_S)), PROBE_S)
    except ValueError:
        return DEFAULT_STALL_S


def _progress(status: dict) -> tuple:
    """What changes while the daemon's fills move: bytes filled so far, and fills that ended either way."""
    stats = status.get("stats", {})
    filling = tuple((s.get("key"), s.get("filled")) for s in status.get("segments", ())
                    if s.get("state") == "filling")
    return filling, stats.get("fills"), len(status.get("failures", ()))


def release(conn: Connection, key: str, path: str, timeout: float | None = -1.0) -> None:
    """Give this process's lease on `key` back; a daemon that does not answer only costs a debug line."""
    try:
        conn.post("/v1/release", {"key": key, "pid": os.getpid()}, timeout=timeout)
    except HearthError as e:
        log.debug("release of %s not sent: %s", path, e.message)


def acquire(conn: Connection, path: str) -> dict:
    """POST /v1/acquire for this process; raises DaemonStalled when the daemon stops answering or moving."""
    limit = stall_seconds()
    seen: dict = {"mark": None, "since": time.monotonic()}

    def waiting() -> None:
        try:
            mark: tuple | None = _progress(conn.get("/v1/status", timeout=PROBE_S))
        except HearthError:
            mark = seen["mark"]  # no answer is no progress
        if mark != seen["mark"]:
            seen.update(mark=mark, since=time.monotonic())
        elif time.monotonic() - seen["since"] > limit:
            raise DaemonStalled(f"the daemon neither answered nor filled for {limit:.0f} s while {path} "
                                f"was being acquired (HEARTH_STALL_S sets this limit)")

    def late(answer: dict) -> None:
        # Nobody will map it: free the lease now rather than leave the segment "held" by this pid.
        release(conn, answer["key"], path, timeout=PROBE_S)

    return conn.post("/v1/acquire", {"path": path, "pid": os.getpid()}, timeout=None, waiting=waiting,
                     every=PROBE_S, late=late)
