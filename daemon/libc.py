"""libc's mmap, munmap, mincore and mlock through ctypes, for what Python's mmap objects cannot do: hand a
mapping's address to mincore (page_cache.py) and to mlock (residency.py)."""

from __future__ import annotations

import ctypes
import mmap

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


def map_readonly(fd: int, size: int) -> int | None:
    """The address of a shared, read-only mapping of `fd`'s first `size` bytes; None where mmap failed (its
    errno: `last_errno()`)."""
    addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    return None if addr in (None, _MAP_FAILED) else addr


def unmap(addr: int, size: int) -> None:
    _libc.munmap(addr, size)


def mincore(addr: int, size: int, vec: ctypes.Array) -> bool:
    """Fill `vec` with a byte per page of the mapping (bit 0: the page is in RAM); False where it failed."""
    return _libc.mincore(addr, size, vec) == 0


def mlock(addr: int, size: int) -> bool:
    """Lock the mapping's pages in RAM; False where it failed (its errno: `last_errno()`)."""
    return _libc.mlock(addr, size) == 0


def last_errno() -> int:
    return ctypes.get_errno()
