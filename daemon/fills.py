"""Fills: copying a source file into its segment, one fill per key, at most `max_fills` at once.

Concurrency rules:
- single flight: a fill is registered under its key as soon as it is asked for; later requests for the
  key get the same task (callers shield it, so one that hangs up cannot cancel a fill others await);
- at most `max_fills` fills of different keys run at once (Slots follows the setting while running);
- room is made (eviction) and the filling entry registered in one step on the loop, so two fills never
  count on the same free bytes;
- only `segments.fill` runs off the loop, in a worker thread with its own copy threads; its progress comes
  back through `call_soon_threadsafe`, and everything else here runs on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..core.errors import HearthError
from ..core.sizes import format_size
from . import segments
from .budget import make_room
from .entries import Entries, Entry
from .events import Events
from .index import Index
from .segments import SourceId
from .settings import Settings
from .slots import Slots

log = logging.getLogger("hearth.fills")

MAX_FAILURES = 50


class Fills:
    def __init__(self, settings: Settings, entries: Entries, events: Events, index: Index,
                 stats: dict[str, int], budget: Callable[[], int]):
        self._settings, self._entries, self._events, self._index = settings, entries, events, index
        self._stats, self._budget = stats, budget
        self._tasks: dict[str, asyncio.Future] = {}
        self.slots = Slots(lambda: settings["max_fills"])
        self.failures: dict[str, dict] = {}  # key -> why its last fill failed (insertion ordered)

    def pending(self) -> list[str]:
        """Keys with a fill queued or under way."""
        return sorted(self._tasks)

    def start(self, source: SourceId, idle: bool) -> asyncio.Future:
        """The one fill of this key (single flight): the one under way, or a new one, registered at once.

        `idle` fills (preloads) read the disk at idle I/O priority.
        """
        task = self._tasks.get(source.key)
        if task is None:
            task = asyncio.ensure_future(self._fill(source, idle))
            self._tasks[source.key] = task

            def done(t: asyncio.Future, k: str = source.key) -> None:
                if self._tasks.get(k) is t:  # not a newer fill of the same key
                    del self._tasks[k]

            task.add_done_callback(done)
        return task

    def cancel(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()

    async def _fill(self, source: SourceId, idle: bool) -> Entry:
        async with self.slots:
            make_room(self._entries, source, self._budget(), self._stats)
            now = time.time()
            entry = Entry(source, "filling", now, now, pinned=source.path in self._settings["pinned"])
            self._entries[source.key] = entry
            self._events.emit("cache", action="filling", key=source.key, path=source.path, size=source.size)
            loop = asyncio.get_running_loop()
            last = [0.0]

            def progress(done: int) -> None:  # called from fill threads
                t = time.monotonic()
                if t - last[0] > 0.1 or done == source.size:
                    last[0] = t
                    loop.call_soon_threadsafe(self._progress, entry, done)

            t0 = time.perf_counter()
            try:
                fd, header = await asyncio.to_thread(segments.fill, source, progress, idle)
            except BaseException as e:
                self._entries.pop(source.key, None)
                if not isinstance(e, asyncio.CancelledError):
                    error = (e.to_dict()["error"] if isinstance(e, HearthError)
                             else {"code": "internal", "message": f"{source.path}: {type(e).__name__}: {e}"})
                    self._remember_failure(source, error)
                    self._events.emit("cache", action="failed", key=source.key, path=source.path, error=error)
                raise
            self.failures.pop(source.key, None)
            entry.fd, entry.tensors, entry.filled = fd, len(header.tensors), source.size
            entry.fill_seconds = time.perf_counter() - t0
            entry.state = "ready"
            self._stats["fills"] += 1
            self._index.save(self._entries)
            self._events.emit("cache", action="ready", key=source.key, path=source.path,
                              seconds=round(entry.fill_seconds, 3))
            log.info("filled %s: %s in %.2f s", source.path, format_size(source.size), entry.fill_seconds)
            return entry

    def _remember_failure(self, source: SourceId, error: dict) -> None:
        """Why the last fill of a key failed, for `hearth preload` and the panel (the latest few only)."""
        self.failures.pop(source.key, None)
        self.failures[source.key] = {"key": source.key, "path": source.path, "time": time.time(), **error}
        while len(self.failures) > MAX_FAILURES:
            del self.failures[next(iter(self.failures))]

    def _progress(self, entry: Entry, done: int) -> None:
        entry.filled = done
        self._events.emit("fill", key=entry.key, path=entry.source.path, done=done, total=entry.size)
