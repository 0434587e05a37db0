"""Holds: the models a queued prompt names, kept from eviction until that prompt ran or its hold lapsed.

A ComfyUI process (nodes/prefetch.py) sets a hold when a prompt is queued: the prompt's id, the source paths
its loaders name, its own pid and a lifetime. It renews the holds of prompts still waiting and drops each
one when its prompt has left the queue. A hold lapses when it is not renewed within its lifetime or its
process is gone (the sweep drops it), so a ComfyUI that crashed or hung never keeps models for ever.

What a hold protects: an entry whose source path it names is never evicted to make room for a background
fill (another prompt's prefetch, a preload, the warm set), and only after every other candidate for a fill
a load waits on (the prompt running now comes before the ones waiting). Loop thread only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psutil

from ..core.errors import BadRequest
from .entries import Entry

DEFAULT_S = 600.0
MAX_S = 24 * 3600.0
MAX_HOLDS = 10_000  # a queue of that many prompts is already unusual; the cap keeps a bad client bounded
MAX_ID = 200


@dataclass
class Hold:
    id: str
    paths: frozenset[str]  # real paths
    pid: int | None
    expires: float


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def check_request(hold_id: Any, seconds: Any) -> tuple[str, float]:
    """The hold's id and lifetime from a request, or BadRequest saying what is wrong."""
    if not isinstance(hold_id, str) or not 0 < len(hold_id) <= MAX_ID:
        raise BadRequest(f"hold must be a non-empty string of at most {MAX_ID} characters")
    if seconds is None:
        return hold_id, DEFAULT_S
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= MAX_S:
        raise BadRequest(f"seconds must be a number above 0 and at most {MAX_S:.0f}")
    return hold_id, float(seconds)


class Holds:
    def __init__(self) -> None:
        self._holds: dict[str, Hold] = {}

    def set(self, hold_id: str, paths: list[str], pid: int | None, seconds: float) -> Hold:
        if hold_id not in self._holds and len(self._holds) >= MAX_HOLDS:
            raise BadRequest(f"{MAX_HOLDS} holds are set already; drop some first")
        hold = Hold(hold_id, frozenset(paths), pid, time.time() + seconds)
        self._holds[hold_id] = hold
        return hold

    def drop(self, hold_id: str) -> bool:
        return self._holds.pop(hold_id, None) is not None

    def protects(self, entry: Entry) -> bool:
        now = time.time()
        return any(entry.source.path in h.paths and h.expires > now for h in self._holds.values())

    def sweep(self) -> None:
        """Drop holds that lapsed or whose ComfyUI process is gone."""
        now = time.time()
        for h in list(self._holds.values()):
            if h.expires <= now or (h.pid is not None and not _alive(h.pid)):
                del self._holds[h.id]

    def describe(self) -> list[dict]:
        return [{"id": h.id, "paths": sorted(h.paths), "pid": h.pid, "expires": h.expires}
                for h in self._holds.values()]
