"""Keeping segments in RAM against swap: the daemon maps each ready segment read-only and locks the mapping.

tmpfs pages go to swap under memory pressure like anonymous memory; pages of a locked mapping do not. The
pages are the segment's own (MAP_SHARED, PROT_READ: no copy, nothing writable), shared with every client.
The kernel counts locked bytes against the daemon's RLIMIT_MEMLOCK (soft limit; CAP_IPC_LOCK lifts it).
Most logins get 8 MiB (systemd's default since v253; older ones 64 KiB), so by default only segments that
fit in what is left of it are locked; for every other one status says why not (the limit, what is locked
already, what the segment needs). The install's login unit raises the limit (LimitMEMLOCK=). On a machine
without swap a lock changes nothing but the page tables.

`lock` runs in a worker thread (mlock walks every page: seconds for a 23 GB segment) on a dup of the
segment's fd, so the entry's own fd may close meanwhile; entries.py asks for it from its sweep, and the
reaper (reaper.py) lets go of it, off the event loop, with the segment's fd when the segment goes.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import threading

from ..core.sizes import format_size
from . import libc

log = logging.getLogger("hearth.residency")

_lock = threading.Lock()
_locked_bytes = 0


class MemoryLock:
    """A segment's lock: being taken (in a worker thread), taken, or refused with why; then let go.

    Thread-safe: `lock` settles it in a worker thread, and `release` may run in the reaper's thread
    (reaper.py) even while the lock is still being taken; it then waits for the taker, so that once it
    returns the daemon maps none of the segment.
    """

    def __init__(self) -> None:
        self._outcome: tuple[bool, str | None] = (False, "being locked")  # one tuple: never read half settled
        self._addr: int | None = None
        self._size = 0
        self._settled = threading.Event()

    @property
    def locked(self) -> bool:
        return self._outcome[0]

    @property
    def reason(self) -> str | None:
        return self._outcome[1]

    def settle(self, locked: bool, reason: str | None, addr: int | None = None, size: int = 0) -> None:
        """The taker's outcome (its mapping, if any, is this lock's from here)."""
        self._addr, self._size = addr, size
        self._outcome = (locked, reason)
        self._settled.set()

    def release(self) -> None:
        """Unlock and unmap (munmap drops the lock); a segment whose name is gone can then be freed."""
        global _locked_bytes
        self._settled.wait()
        if self._addr is not None:
            libc.unmap(self._addr, self._size)
            with _lock:
                _locked_bytes -= self._size
            self._addr = None
            self._outcome = (False, self.reason)

    def to_dict(self) -> dict:
        locked, reason = self._outcome
        return {"locked": locked, "reason": reason}


def memlock_limit() -> int | None:
    """The soft RLIMIT_MEMLOCK in bytes; None: unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return None if soft == resource.RLIM_INFINITY else soft


def lock(fd: int, size: int, into: MemoryLock | None = None) -> MemoryLock:
    """Map `fd` (a dup of a ready segment's; closed here) shared and read-only, and mlock it within the limit.

    The outcome settles `into` (a lock being taken, which status shows meanwhile) or a new MemoryLock.
    """
    held = into or MemoryLock()
    try:
        held.settle(*_map_and_lock(fd, size))
    except Exception as e:  # noqa: BLE001 - whatever failed, the segment is served unlocked and status says why
        held.settle(False, f"lock failed: {e}")
    return held


def _map_and_lock(fd: int, size: int) -> tuple[bool, str | None, int | None, int]:
    global _locked_bytes
    try:
        limit = memlock_limit()
        with _lock:
            if limit is not None and _locked_bytes + size > limit:
                return (False, f"RLIMIT_MEMLOCK is {format_size(limit)}, {format_size(_locked_bytes)} locked "
                               f"already, this segment needs {format_size(size)}: it may be swapped out (raise "
                               "LimitMEMLOCK= in the login unit, or ulimit -l)", None, 0)
            _locked_bytes += size  # promised now, so two threads cannot both take the last of the limit
        addr = libc.map_readonly(fd, size)
    finally:
        # Closed before the outcome settles: from then on only the mapping refers to the segment, and a
        # release that waited for the outcome leaves the daemon nothing of it.
        os.close(fd)
    if addr is None:
        return _refused(size, "mmap", libc.last_errno())
    if not libc.mlock(addr, size):
        err = libc.last_errno()
        libc.unmap(addr, size)
        return _refused(size, "mlock", err)
    return True, None, addr, size


def _refused(size: int, call: str, err: int) -> tuple[bool, str, None, int]:
    global _locked_bytes
    with _lock:
        _locked_bytes -= size
    why = {errno.ENOMEM: "over RLIMIT_MEMLOCK or out of memory", errno.EPERM: "not permitted",
           errno.EAGAIN: "some pages could not be locked"}.get(err, os.strerror(err))
    log.info("segment not locked in memory: %s failed: %s", call, why)
    return False, f"{call} failed: {why}", None, 0
