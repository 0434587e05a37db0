"""Which parts of a source file the kernel's page cache holds already, so a fill copies those from RAM.

A fill reads the file with O_DIRECT (segments.py): from a cold disk the reads land in the segment with no
page-cache copy in between. But a file the page cache holds (just downloaded, just loaded the stock way,
or mapped by a process that still uses it) would then be read from the disk again: on this machine a 4 MiB
file took 15 ms that way against under 2 ms through the page cache. mincore() on a read-only shared mapping
of the file says, page by page, what the cache holds; ranges mostly cached are copied from there.

Since Linux 5.0 mincore() reports a file's cached pages only to a process that owns the file or may write
it (a side channel otherwise); for any other file every page reads as absent, and the fill reads it all
with O_DIRECT, as it did before this check.
"""

from __future__ import annotations

import ctypes
import mmap

from . import libc

PAGE = mmap.PAGESIZE
_LOW_BIT = bytes(i & 1 for i in range(256))  # mincore sets bit 0 of a page's byte; the others are reserved
MOSTLY = 0.5  # a range with at least this share of its pages cached is cheaper to copy from the cache


class Residency:
    """The page cache's hold on one file at one moment: `mostly_cached(begin, end)` per byte range."""

    def __init__(self, pages: bytes):
        self._pages = pages

    @classmethod
    def of(cls, fd: int, size: int) -> Residency:
        """Ask the kernel about every page of `fd`'s first `size` bytes; a file it will not say anything
        about (no mapping, no mincore) reads as nothing cached."""
        if size <= 0:
            return cls(b"")
        addr = libc.map_readonly(fd, size)
        if addr is None:
            return cls(b"")
        try:
            vec = ctypes.create_string_buffer((size + PAGE - 1) // PAGE)
            if not libc.mincore(addr, size, vec):
                return cls(b"")
            return cls(vec.raw.translate(_LOW_BIT))
        finally:
            libc.unmap(addr, size)

    def mostly_cached(self, begin: int, end: int) -> bool:
        first, last = begin // PAGE, (end + PAGE - 1) // PAGE
        window = self._pages[first:last]
        return bool(window) and window.count(1) >= MOSTLY * (last - first)
