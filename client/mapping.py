"""Mapping a segment copy-on-write and handing out tensor views of it.

The mapping is MAP_PRIVATE (mmap.ACCESS_COPY): reads share the segment's pages with every other process,
and a write (ComfyUI patching weights in place) lands in a private page of this process only. While any
tensor lives, the mapping lives; while the mapping lives, its fd stays open with a shared flock, which is
how the daemon knows the segment is held. A finalizer on the mapping closes the fd. Every mapping is known
to client/pinning.py, which may register it for CUDA when a caller asks, and unregisters it before it goes.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import weakref
from typing import cast

import torch

from ..core.errors import NotAllowed, SourceChanged
from ..core.safetensors_format import DTYPES, Header, read_header
from . import pinning

# safetensors dtype name -> this torch's dtype, or None where this torch build lacks it.
TORCH_DTYPES = {name: getattr(torch, d.torch_name, None) for name, d in DTYPES.items()}


class _Mapping(mmap.mmap):
    """An mmap that can carry a finalizer (plain mmap objects take weak references too, but not attributes),
    and that is unregistered from CUDA before it is unmapped: __del__ runs before mmap's own dealloc."""

    def __del__(self) -> None:
        if pinning is not None:  # None only while the interpreter tears modules down
            pinning.forget(self)


def map_segment(path: str, expected_size: int, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Map the segment at `path` privately: a view per tensor, in file order, and the header's metadata."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        st = os.fstat(fd)
        if st.st_uid != os.getuid():  # /dev/shm is shared: never map a file another user put there
            raise NotAllowed(f"segment for {name} is owned by uid {st.st_uid}, not this user")
        size = st.st_size
        if size != expected_size:
            raise SourceChanged(f"segment for {name} is {size} bytes, expected {expected_size}")
        header = read_header(fd, name)
        unsupported = {e.dtype for e in header.tensors if TORCH_DTYPES[e.dtype] is None}
        if unsupported:
            raise TypeError(f"this torch cannot hold dtypes {sorted(unsupported)} of {name}")
        mm = _Mapping(fd, size, access=mmap.ACCESS_COPY) if size else None
    except BaseException:
        os.close(fd)
        raise
    if mm is None:
        os.close(fd)
        return {}, dict(header.metadata)
    weakref.finalize(mm, os.close, fd)
    pinning.track(mm, size, name)
    return _views(mm, header), dict(header.metadata)  # a copy: the header is shared (read_header keeps it)


def _views(mm: mmap.mmap, header: Header) -> dict[str, torch.Tensor]:
    out = {}
    base = header.data_start
    for e in header.tensors:
        dtype = cast(torch.dtype, TORCH_DTYPES[e.dtype])  # not None: map_segment refused dtypes this torch lacks
        if e.end == e.begin:
            # reshape, as safetensors does: torch.empty(shape) overflows computing strides for shapes like
            # (0, 2**62, 4), which a stock load accepts
            out[e.name] = torch.empty(0, dtype=dtype).reshape(e.shape)
            continue
        count = (e.end - e.begin) // dtype.itemsize
        out[e.name] = torch.frombuffer(mm, dtype=dtype, count=count, offset=base + e.begin).view(e.shape)
    return out
