"""The cache's table: one entry per segment, who holds it, and the one way an entry leaves it (drop).

An entry is "filling", "ready", or "stale": evicted while clients still map it, its name unlinked and its
memory counted until the last holder lets go. Stale entries are kept apart from the live ones because a
refill of the same file takes the same key meanwhile.

Loop thread only: fills change their entry on the loop (progress from fill threads arrives through
`call_soon_threadsafe`), and the sweep runs on the loop too. The sweep also asks residency.py to lock each
ready segment in memory (in a worker thread, once per entry). A segment that leaves for good (its name gone,
nobody holding it) is freed by the reaper (reaper.py), off the loop: its lock and its fd go there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field

import psutil

from . import residency, segments
from .events import Events
from .reaper import Reaper
from .segments import SourceId

log = logging.getLogger("hearth.entries")

# A client opens and flocks its segment right after acquire; the lease covers that gap and names the
# holder for the panel. After it, the flock is the ground truth of "held".
LEASE_GRACE_S = 30.0


@dataclass(eq=False)
class Entry:
    source: SourceId
    state: str  # "filling", "ready", "stale"
    created: float
    last_use: float
    hits: int = 0
    filled: int = 0
    tensors: int = 0
    fill_seconds: float | None = None
    fd: int = -1
    pinned: bool = False
    leases: dict[int, float] = field(default_factory=dict)
    memory_lock: residency.MemoryLock | None = None  # None: not asked for yet

    @property
    def key(self) -> str:
        return self.source.key

    @property
    def size(self) -> int:
        return self.source.size

    def held(self) -> bool:
        return bool(self.leases) or (self.fd >= 0 and segments.is_held(self.fd))

    @property
    def evictable(self) -> bool:
        return self.state == "ready" and not self.pinned and not self.held()

    def holders(self) -> list[int]:
        pids = set(self.leases)
        if self.fd >= 0:
            pids.update(segments.holder_pids(self.fd))
        return sorted(pids)

    def memory_lock_state(self) -> dict | None:
        """For status: whether the daemon holds the segment in RAM against swap, and why not."""
        return self.memory_lock.to_dict() if self.memory_lock else None


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Entries(dict[str, Entry]):
    """The live entries by key, and the stale ones beside them."""

    def __init__(self, events: Events):
        super().__init__()
        self.stale: list[Entry] = []
        self._events = events
        self.reaper = Reaper()

    def all(self) -> list[Entry]:
        return [*self.values(), *self.stale]

    def used(self) -> int:
        return sum(e.size for e in self.all())

    def drop(self, entry: Entry, why: str) -> None:
        """Unlink a segment's name (at once: a refill of the key can publish, nothing maps this one by name);
        its memory goes now (the reaper frees it), or when its last holder lets go."""
        segments.unlink(entry.key)
        if entry.state == "filling":
            return
        if self.get(entry.key) is entry:
            del self[entry.key]
        if entry.held():
            entry.state = "stale"
            self.stale.append(entry)
        else:
            self._free(entry)
        log.info("%s: %s", entry.source.path, why)
        self._events.emit("cache", action="evicted", key=entry.key, path=entry.source.path, reason=why,
                          pending=entry.state == "stale")

    def drop_other_versions(self, source: SourceId) -> None:
        """Drop the ready segments of `source`'s path taken from an earlier version of the file."""
        for e in list(self.values()):
            if e.source.path == source.path and e.key != source.key and e.state == "ready":
                self.drop(e, "source file changed on disk")

    def sweep(self) -> bool:
        """Drop leases of dead or lapsed clients, free stale segments, notice changed source files.

        True when the table changed (the index is then saved by the caller).
        """
        now = time.time()
        changed = False
        for e in self.all():
            for pid, t in list(e.leases.items()):
                if now - t > LEASE_GRACE_S or not _pid_alive(pid):
                    del e.leases[pid]
            if e.state == "stale":
                if not e.held():
                    self.stale.remove(e)
                    self._free(e)
                    changed = True
            elif e.state == "ready":
                try:
                    current = SourceId.of(e.source.path)
                    moved = e.source.mismatch(current)
                except OSError:
                    moved = "missing"
                if moved:
                    self.drop(e, f"source file changed on disk ({moved})")
                    changed = True
                elif e.memory_lock is None and e.fd >= 0:
                    _lock_in_memory(e)
        return changed

    def _free(self, e: Entry) -> None:
        """Hand a segment out of the table, its name gone and nobody holding it, to the reaper; used() stops
        counting it at once, the tmpfs when the reaper is done."""
        fd, e.fd = e.fd, -1  # the reaper's from here: never used on the loop again (nor its number, reused)
        self.reaper.free(e.source.path, e.size, e.memory_lock, fd)


def _lock_in_memory(e: Entry) -> None:
    """Have residency.py lock a ready segment in a worker thread (on a dup of its fd); "being locked" meanwhile.

    The entry keeps the lock being taken: if the segment goes before it is settled, the reaper's release
    waits for it, so no mapping of a freed segment is ever left behind, nor let go on the loop.
    """
    try:
        loop = asyncio.get_running_loop()
        fd = os.dup(e.fd)
    except (RuntimeError, OSError) as exc:  # not on the loop (a direct sweep): the loop's next one asks
        log.debug("memory lock of %s not asked now: %s", e.key, exc)
        return
    e.memory_lock = residency.MemoryLock()
    try:
        loop.run_in_executor(None, residency.lock, fd, e.size, e.memory_lock)
    except RuntimeError as exc:  # the loop's executor is shut down: the daemon is stopping
        os.close(fd)
        e.memory_lock.settle(False, f"not locked: {exc}")
