"""The event bus: what the cache does, told as it happens to the panel's websockets and ComfyUI's relay.

Loop thread only; fill threads reach it through `loop.call_soon_threadsafe`. Each viewer has a bounded
queue: one that stops reading loses events rather than slowing the cache. `record` (activity.py) sees every
event first, so the kept history and what viewers get are the same events.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


class Events:
    def __init__(self, record: Callable[[dict], None] | None = None) -> None:
        self._queues: set[asyncio.Queue] = set()
        self._record = record

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=1000)
        self._queues.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._queues.discard(q)

    def emit(self, kind: str, **data: Any) -> None:
        event = {"type": kind, "time": time.time(), **data}
        if self._record is not None:
            self._record(event)
        for q in list(self._queues):
            try:
                q.put_nowait(event)
            except asyncio.QueueFull:
                pass  # a stalled viewer loses events rather than slowing the cache
