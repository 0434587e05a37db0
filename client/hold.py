"""Holding what a queued prompt names: POST /v1/hold from this process (daemon/holds.py: what a hold does).

Sent through the same connection as the loads (load._connect), so the model folders this process registered
reach a daemon started or restarted since, and a hold never fails for want of them.
"""

from __future__ import annotations

import os

from .load import _connect


def hold(hold_id: str, paths: list[str], seconds: float) -> dict:
    """Keep `paths` (absolute) from eviction for this process's prompt `hold_id` and prefetch the ones not
    cached; raises the daemon's typed errors (DaemonUnavailable when it is down)."""
    return _connect().post("/v1/hold", {"hold": hold_id, "paths": paths, "seconds": seconds,
                                        "pid": os.getpid()})


def release_hold(hold_id: str) -> None:
    """The prompt left the queue: its models may be evicted again like any other."""
    _connect().post("/v1/hold", {"hold": hold_id, "paths": []})
