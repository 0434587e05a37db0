"""Room in the tmpfs for a fill: promised whole before the fill starts, allocated chunk by chunk during it.

New tmpfs pages are zeroed by the kernel when they are allocated: ~0.5 s for 2 GiB here. Allocating the
whole segment up front (one `posix_fallocate`) put that pass before the first disk read; allocating each
chunk right before a worker reads into it lets the zeroing of one chunk overlap the disk reads of others.

What one big fallocate guaranteed still holds: the fill checks the free space against what other fills
have been promised and not yet allocated, so two fills never count on the same free bytes; every page is
allocated before anything is written to it, so a full tmpfs is a clean ShmFull error, never a SIGBUS.
"""

from __future__ import annotations

import errno
import os
import threading

from ..core.errors import ShmFull
from ..core.home import shm_dir, shm_space

_lock = threading.Lock()
_promised = 0  # bytes promised to fills under way and not allocated yet (this daemon's)


class Room:
    """The room of one segment being filled: `take` allocates a range, `close` returns what was not taken."""

    def __init__(self, fd: int, size: int, what: str):
        global _promised
        self.fd, self.size, self.left, self.what = fd, size, size, what
        with _lock:
            free = shm_space()[1] - _promised
            if size > free:
                self.left = 0
                raise self._full(free)
            _promised += size
        os.ftruncate(fd, size)  # the segment's length; no page is allocated by it

    def take(self, begin: int, end: int) -> None:
        """Allocate [begin, end) of the segment; ShmFull when the tmpfs filled up in the meantime."""
        global _promised
        try:
            os.posix_fallocate(self.fd, begin, end - begin)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EFBIG):
                raise self._full(shm_space()[1]) from None
            raise
        with _lock:
            # At most what this room promised: a retried range (O_DIRECT refused midway) is taken twice.
            n = min(end - begin, self.left)
            _promised -= n
            self.left -= n

    def close(self) -> None:
        global _promised
        with _lock:
            _promised -= self.left
            self.left = 0

    def _full(self, free: int) -> ShmFull:
        return ShmFull(f"{shm_dir()} has no room for {self.what} ({self.size} bytes; {max(free, 0)} free): "
                       f"raise its size or the budget down")
