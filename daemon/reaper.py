"""Freeing evicted segments' memory off the event loop, in one thread, in the order they were evicted.

The last close of a tmpfs file frees its pages, and that takes time: ~0.75 s for 4 GiB here, ~4 s for a
23 GB FLUX segment. On the loop it stalled every answer meanwhile (other processes' hits, health probes that
give up after HEARTH_STALL_S, the panel's events). entries.py unlinks a segment's name on the loop first, so
a refill can publish the same key at once and nothing can map the old one by name, and then hands over only
what keeps its pages: the memory lock's mapping (residency.py) and the fd, which the loop never uses again.

Until a free ends, its pages still count as used in the tmpfs. A fill that needs that room waits for the
frees under way (`freed`, fills.py) before it reads or takes the tmpfs's free space, so a tight tmpfs never
refuses it for pages on their way back; `freeing` is what status shows meanwhile. A stop waits for them
(bounded; the interpreter's exit joins this thread in any case), and a crash mid-free loses nothing: the
names are gone already, and the kernel frees the pages as the process dies.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor

from ..core.sizes import format_size
from .residency import MemoryLock

log = logging.getLogger("hearth.reaper")


class Reaper:
    def __init__(self) -> None:
        # One worker: frees end in the order they were handed over, so the last one's end is everyone's.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hearth-reaper")
        self._pending: list[tuple[int, Future]] = []  # (bytes, its free), oldest first

    def free(self, what: str, size: int, lock: MemoryLock | None, fd: int) -> None:
        """Free a segment out of the table whose name is gone and that nobody holds: `lock` and `fd` are this
        thread's from here (the caller has forgotten `fd`)."""
        self._pending = [p for p in self._pending if not p[1].done()]
        self._pending.append((size, self._pool.submit(_free, what, size, lock, fd)))

    def freeing(self) -> int:
        """Bytes handed over whose pages the tmpfs still counts as used."""
        return sum(size for size, f in self._pending if not f.done())

    async def freed(self) -> None:
        """Return once every free handed over so far has ended (their pages are back in the tmpfs)."""
        if self._pending and not (last := self._pending[-1][1]).done():
            # shielded: a waiter that is cancelled must not cancel a free still queued
            await asyncio.shield(asyncio.wrap_future(last))


def _free(what: str, size: int, lock: MemoryLock | None, fd: int) -> None:
    t0 = time.perf_counter()
    try:
        try:
            if lock is not None:
                lock.release()
        finally:
            if fd >= 0:
                os.close(fd)
    except Exception:  # a free that failed must not fail the fills waiting on it
        log.exception("freeing %s failed", what)
    log.debug("freed %s (%s) in %.3f s", what, format_size(size), time.perf_counter() - t0)
