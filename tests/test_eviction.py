"""Freeing an evicted segment's memory happens off the daemon's event loop (daemon/reaper.py), on a real
daemon and a real tmpfs of the test's own (so its usage is this daemon's alone): the daemon answers while the
pages of an evicted segment are still being freed, a fill into a tight tmpfs waits for the pages it needs
instead of refusing, and nothing is left behind, in the tmpfs or in the daemon's fds."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import threading
from pathlib import Path

import psutil
import pytest

from conftest import fd_targets, make_model

MiB = 1 << 20


def make_real_model(path: Path, size: int) -> Path:
    """A .safetensors of one U8 tensor of `size` bytes, all of them written (no file hole)."""
    head = json.dumps({"model.big": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    head += b" " * (-len(head) % 8)
    block = bytes(range(1, 256)) * (4 * MiB // 255 + 1)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head)
        for begin in range(0, size, 4 * MiB):
            f.write(block[:min(4 * MiB, size - begin)])
    return path


@pytest.fixture
def tmpfs(tmp_path):
    """mount_tmpfs(MiB) -> a tmpfs of that size for one daemon; skips where none can be mounted or RAM is short."""
    mounted: list[Path] = []

    def mount(mib: int) -> Path:
        if psutil.virtual_memory().available < 3 * mib * MiB:
            pytest.skip(f"needs {3 * mib} MiB of available RAM for a {mib} MiB tmpfs and its files")
        mnt = tmp_path / f"shm{len(mounted)}"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0700", "tmpfs", str(mnt)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs of our own: {r.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def used(mnt: Path) -> int:
    st = os.statvfs(mnt)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def freed_segments_in_fds(d, mnt: Path) -> list[str]:
    """The daemon's fds still open on a file of the tmpfs whose name is gone."""
    return [t for t in fd_targets(d.proc.pid) if t.startswith(str(mnt)) and t.endswith("(deleted)")]


def small_and_big(make_daemon, tmpfs, shm_mib: int, big_mib: int):
    """A daemon on a tmpfs of `shm_mib` holding a small model and a big one of `big_mib`: (daemon, tmpfs,
    small, small's key, the tmpfs's use with the small one only, big, big's key)."""
    mnt = tmpfs(shm_mib)
    d = make_daemon(env={"HEARTH_BUDGET": "8G"}, shm=mnt)
    small = make_model(d.models / "small.safetensors")
    small_key = d.acquire(small)["key"]
    base = used(mnt)
    big = make_real_model(d.models / "big.safetensors", big_mib * MiB)
    return d, mnt, small, small_key, base, big, d.acquire(big)["key"]


def test_the_daemon_answers_while_an_evicted_segment_is_freed(make_daemon, tmpfs):
    d, mnt, small, small_key, base, big, key = small_and_big(make_daemon, tmpfs, 1100, 1024)
    size = d.segment(big)["size"]
    assert used(mnt) >= base + size  # every page of it is allocated
    seg = mnt / d.seg_name(key)
    # A second client, ready before the evict (imports, a first load), loads the small model again when told.
    other = d.client(f"""
    say(ready=load({str(small)!r}).hit)
    sys.stdin.readline()
    r = load({str(small)!r})
    say(cached=r.cached, hit=r.hit, reason=r.reason)
    """)
    assert other.read() == {"ready": True}

    evicted: dict = {}
    evicting = threading.Thread(target=lambda: evicted.update(d.ok("POST", "/v1/evict", {"path": str(big)})))
    evicting.start()
    while seg.exists():  # (polled without a pause: the free takes a fifth of a second here)
        assert evicting.is_alive() or evicted, "the evict ended without unlinking the segment"
    # Its name is gone: the daemon has begun to free its pages. Ask it things now, and only then look at
    # the tmpfs: if it still counts (most of) the segment, the answers came while the pages were being freed.
    status, health = d.api("GET", "/v1/health", token=None)
    other.tell()
    load = other.read()
    st = d.status()
    still_used = used(mnt)
    evicting.join(30)

    assert status == 200, health
    assert load == {"cached": True, "hit": True, "reason": None}, load
    assert still_used > base + size // 2, ("the answers came only after the segment was freed",
                                           still_used - base, size)
    assert st["shm"]["freeing"] == size  # status says where the tmpfs's used bytes are going
    assert all(s["key"] != key for s in st["segments"])  # and the budget stopped counting it at once
    assert [e["key"] for e in evicted["evicted"]] == [key]

    d.wait_for(lambda: d.status()["shm"]["freeing"] == 0, timeout=60, what="the free to end")
    assert used(mnt) == base
    assert d.final_names() == [d.seg_name(small_key)]
    assert freed_segments_in_fds(d, mnt) == []
    assert other.finish()[0] == 0


def test_fills_into_a_tight_tmpfs_wait_for_the_pages_of_what_they_evicted(make_daemon, tmpfs):
    """640 MiB of tmpfs, two 384 MiB models: each fill needs the other's pages back. By LRU eviction (the fill
    waits for its victim's pages before it allocates) and after a user's evict (the fill waits for the frees
    under way before it reads the tmpfs's free space); never a spurious shm_full."""
    mnt = tmpfs(640)
    d = make_daemon(env={"HEARTH_BUDGET": "8G"}, shm=mnt)
    a = make_real_model(d.models / "a.safetensors", 384 * MiB)
    b = make_real_model(d.models / "b.safetensors", 384 * MiB - 4096)
    key_a = d.acquire(a)["key"]
    key_b = d.acquire(b)["key"]  # LRU: a goes
    st = d.status()
    assert [s["key"] for s in st["segments"]] == [key_b] and st["stats"]["evictions"] == 1
    assert filecmp.cmp(b, mnt / d.seg_name(key_b), shallow=False)

    d.ok("POST", "/v1/evict", {"path": str(b)})  # answered at once; b's pages are freed meanwhile
    assert d.acquire(a)["key"] == key_a
    assert filecmp.cmp(a, mnt / d.seg_name(key_a), shallow=False)
    assert d.final_names() == [d.seg_name(key_a)] and d.shm_names() == d.final_names()
    assert freed_segments_in_fds(d, mnt) == []


def test_a_stop_right_after_an_evict_leaves_the_tmpfs_as_it_should(make_daemon, tmpfs):
    """The stop waits for the free under way; the segment kept stays for the next daemon, which re-adopts it."""
    d, mnt, small, small_key, base, big, _key = small_and_big(make_daemon, tmpfs, 640, 512)
    d.ok("POST", "/v1/evict", {"path": str(big)})
    assert d.stop() == 0
    assert used(mnt) == base
    assert d.final_names() == [d.seg_name(small_key)]
    assert "still being freed" not in d.log()
    d.start()
    assert d.acquire(small)["hit"]


def test_a_memory_lock_let_go_while_being_taken_waits_for_the_taker(tmp_path):
    """A segment evicted while its memory lock is still being taken (residency.py, in a worker thread): the
    reaper's release waits for the taker, then unmaps, so no mapping of the freed segment is left behind."""
    from comfyui_hearth.daemon import residency

    size = 2 * MiB
    if (residency.memlock_limit() or size) < size:
        pytest.skip("RLIMIT_MEMLOCK below 2 MiB")
    path = Path("/dev/shm") / f"hearth-test-eviction-{os.getpid()}"
    path.write_bytes(b"\x5a" * size)
    fd = os.open(path, os.O_RDONLY)
    try:
        held = residency.MemoryLock()  # what entries.py keeps while the worker has not settled it
        releasing = threading.Thread(target=held.release)
        releasing.start()
        releasing.join(0.2)
        assert releasing.is_alive()  # waits for the taker, which has not even begun
        residency.lock(os.dup(fd), size, into=held)
        releasing.join(10)
        assert not releasing.is_alive()
        assert not held.locked
        maps = Path("/proc/self/maps").read_text()
        assert str(path) not in maps  # neither the lock's mapping nor anything else of it is left
    finally:
        os.close(fd)
        path.unlink()
