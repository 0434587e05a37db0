"""The daemon keeps segments resident against swap where RLIMIT_MEMLOCK allows (daemon/residency.py): a real
daemon started under a lowered limit locks the segment that fits (the kernel's VmLck of the daemon says so),
refuses the one that does not with the limit in the reason, and lets go of a lock when its segment goes."""

from __future__ import annotations

import resource
from contextlib import contextmanager
from pathlib import Path

import pytest

from comfyui_hearth.core.sizes import format_size
from conftest import make_model

MiB = 2**20


@contextmanager
def memlock_soft_limit(limit: int):
    """Children started inside inherit this soft RLIMIT_MEMLOCK (this test process keeps it meanwhile)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if hard != resource.RLIM_INFINITY and hard < limit:
        pytest.skip(f"RLIMIT_MEMLOCK hard limit {hard} is below {limit}")
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (soft, hard))


def vm_locked(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmLck:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmLck line")


def lock_outcome(d, path) -> dict | None:
    """The segment's memory_lock in status once the daemon's worker has decided it."""
    state = (d.segment(path) or {}).get("memory_lock")
    return state if state and state["reason"] != "being locked" else None


def test_segments_are_locked_within_rlimit_memlock(make_daemon):
    with memlock_soft_limit(4 * MiB):
        d = make_daemon()
    small = make_model(d.models / "small.safetensors", numel=250_000)  # 0.96 MiB
    big = make_model(d.models / "big.safetensors", numel=1_500_000)  # 5.7 MiB: over what is left of 4 MiB
    d.acquire(small)
    assert d.wait_for(lambda: lock_outcome(d, small), what="the small one's lock") == {"locked": True, "reason": None}
    size = d.segment(small)["size"]
    assert vm_locked(d.proc.pid) >= size  # the kernel counts it: these pages cannot be swapped out

    d.acquire(big)
    state = d.wait_for(lambda: lock_outcome(d, big), what="the big one's lock")
    assert state["locked"] is False
    assert state["reason"].startswith(f"RLIMIT_MEMLOCK is 4.0 MiB, {format_size(size)} locked already, this "
                                      "segment needs 5.7 MiB")
    assert "LimitMEMLOCK=" in state["reason"]

    before = vm_locked(d.proc.pid)
    d.ok("POST", "/v1/evict", {"path": str(small)})
    d.wait_for(lambda: vm_locked(d.proc.pid) <= before - size, what="the lock to go with its segment")


def anonymous() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no Anonymous line")


def test_locking_keeps_the_pages_shared_where_a_private_mapping_would_copy_them(tmp_path):
    # Hazard 1 of DESIGN section 4 on a CPU: pinning a MAP_PRIVATE writable mapping (a writable
    # cudaHostRegister, or mlock, which faults such a mapping in for writing) gives the process its own copy
    # of every page. residency.lock maps shared and read-only, so its lock copies nothing.
    import ctypes
    import mmap
    import os

    from comfyui_hearth.daemon import residency

    size = 2 * MiB
    if (residency.memlock_limit() or size) < size:
        pytest.skip("RLIMIT_MEMLOCK below 2 MiB")
    path = Path("/dev/shm") / f"hearth-test-residency-{os.getpid()}"
    path.write_bytes(os.urandom(size))
    try:
        fd = os.open(path, os.O_RDONLY)
        before = anonymous()
        held = residency.lock(os.dup(fd), size)
        assert held.locked and held.reason is None
        assert anonymous() - before < size // 8  # locked, and still the file's pages

        private = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
        libc = ctypes.CDLL(None, use_errno=True)
        holder = ctypes.c_char.from_buffer(private)
        before = anonymous()
        assert libc.mlock(ctypes.c_void_p(ctypes.addressof(holder)), ctypes.c_size_t(size)) == 0
        assert anonymous() - before >= size * 7 // 8  # a private copy of (nearly) every page
        del holder
        private.close()
        held.release()
        os.close(fd)
    finally:
        path.unlink()
