"""Faults, each with real processes: the daemon SIGKILLed mid-acquire and during an eviction, a client
SIGKILLed while it maps, the tmpfs filling up mid-fill, the source truncated, rewritten or deleted
mid-fill, a read error from the source. Every time: no wrong tensor, no leaked segment or descriptor, and
the load finishes (the stock way where it must, with the stock outcome).

Faults tried elsewhere and not repeated here: the daemon SIGKILLed and SIGSTOPped mid-fill
(test_restart.test_daemon_killed_mid_fill, test_a_frozen_daemon_never_hangs_a_load), SIGKILLed while
segments are held (test_restart.test_clients_outlive_a_killed_daemon), SIGTERM mid-fill
(test_restart.test_sigterm_during_a_fill_stops_and_leaves_nothing_unchecked), a client killed while it
holds a segment (test_store.test_killed_client_lease_and_hold_are_dropped,
test_killed_client_segment_becomes_evictable), a tmpfs too small from the start and fills racing for it
(test_store.test_full_tmpfs_*, test_concurrent_fills_into_a_tight_tmpfs), a file renamed over its path
after resolution (test_paths).

A fault "mid-fill" is made exact by freezing the daemon (SIGSTOP) as soon as the fill's .part appears,
changing the world, and letting it go on (SIGCONT).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Client, assert_same_tensors, fd_targets, make_model, make_sparse_model, reference

MB = 1 << 20
BIG = 256 * MB
TESTS = str(Path(__file__).parent)


# ---- helpers -----------------------------------------------------------------------------------------

def _frozen_mid_fill(d, timeout: float = 30.0) -> str:
    """Wait for a fill's .part and SIGSTOP the daemon at once; the .part's name (the fill is under way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        part = next((n for n in os.listdir(d.shm) if n.endswith(".part")), None)
        if part is not None:
            d.proc.send_signal(signal.SIGSTOP)
            if part in os.listdir(d.shm):
                return part
            d.proc.send_signal(signal.SIGCONT)  # it ended between the two looks: no fill to catch
        time.sleep(0.0005)
    raise AssertionError("no fill was caught under way")


def _big_loader(d, path: Path, seed: int, env: dict | None = None) -> Client:
    """A client that loads `path` (a sparse model of make_sparse_model) when told, and says how: cached,
    reason, whether the small tensors are seed's, whether the big one is all zeros, or the exception."""
    c = d.client(f"""
    sys.path.insert(0, {TESTS!r})
    from conftest import sample_tensors
    want = sample_tensors({seed}, 256)
    say(ready=True)
    sys.stdin.readline()
    try:
        r = load({str(path)!r})
    except Exception as e:
        say(raised=type(e).__name__, message=str(e).splitlines()[0] if str(e) else "")
    else:
        small = {{k: v for k, v in r.tensors.items() if k != "model.big"}}
        big = r.tensors["model.big"]
        say(cached=r.cached, reason=r.reason, same=same(small, want),
            big_ok=big.dtype == torch.uint8 and big.numel() == {BIG} and not big[::4096].any())
    """, env=env)
    assert c.read() == {"ready": True}
    return c


def _stock_outcome(path: Path) -> dict:
    """What the stock load_file does with the file now: its exception's type and first line."""
    import safetensors.torch

    try:
        safetensors.torch.load_file(str(path))
    except Exception as e:  # noqa: BLE001
        return {"raised": type(e).__name__, "message": str(e).splitlines()[0] if str(e) else ""}
    return {"loaded": True}


def _daemon_files(d) -> list[str]:
    """What the daemon holds open in its tmpfs folder and its models folder (sockets and pipes aside)."""
    return sorted(t for t in fd_targets(d.proc.pid) if t.startswith((str(d.shm), str(d.models))))


def _assert_nothing_left(d) -> None:
    """Once the cache is emptied: no segment, no .part, no descriptor of the daemon on either folder."""
    d.ok("POST", "/v1/evict", {"all": True})
    d.wait_for(lambda: d.status()["segments"] == [], timeout=10, what="the cache to empty")
    assert d.shm_names() == []
    d.wait_for(lambda: _daemon_files(d) == [], timeout=5, what=f"the daemon to close {_daemon_files(d)}")


# ---- the daemon killed -------------------------------------------------------------------------------

def test_daemon_killed_between_the_acquire_answer_and_the_mapping(daemon):
    """The segment outlives its daemon: a client told where it is maps it after the daemon died."""
    d = daemon
    path = make_model(d.models / "a.safetensors", seed=3)
    d.acquire(path)
    c = d.client(f"""
    from comfyui_hearth.client.acquire import acquire
    from comfyui_hearth.client.connection import connect
    from comfyui_hearth.client.mapping import map_segment
    answer = acquire(connect(), {str(path)!r})
    say(hit=answer["hit"])
    sys.stdin.readline()                      # the daemon is SIGKILLed meanwhile
    tensors, _ = map_segment(answer["segment"], answer["size"], {str(path)!r})
    say(same=same(tensors, safetensors.torch.load_file({str(path)!r})))
    sys.stdin.readline()
    """)
    assert c.read() == {"hit": True}
    d.kill()
    c.tell()
    assert c.read() == {"same": True}
    d.start()  # re-adopts the segment the client maps, and names the client as its holder
    assert d.segment(path)["state"] == "ready" and c.pid in d.segment(path)["holders"]
    c.tell()
    rc, _, err = c.finish()
    assert rc == 0, err
    _assert_nothing_left(d)


def test_daemon_killed_in_the_middle_of_many_acquires(daemon):
    """A client loads a cached model again and again while the daemon is SIGKILLed at some point: every
    load returns the file's tensors, from the segment or the stock way, and none raises."""
    d = daemon
    path = make_model(d.models / "a.safetensors", seed=4)
    d.acquire(path)
    c = d.client(f"""
    want = safetensors.torch.load_file({str(path)!r})
    results = []
    for i in range(300):
        r = load({str(path)!r})
        results.append((r.cached, same(r.tensors, want)))
        if i == 20:
            say(started=True)
    say(cached=sum(c for c, _ in results), wrong=sum(not s for _, s in results), n=len(results))
    """)
    assert c.read(timeout=60) == {"started": True}
    time.sleep(0.05)
    d.kill()
    rc, out, err = c.finish(timeout=120)
    assert rc == 0, err
    result = out[-1]
    assert result["n"] == 300 and result["wrong"] == 0, result
    assert 20 < result["cached"] < 300, result  # some loads from the segment, the rest the stock way
    d.start()
    _assert_nothing_left(d)


def test_daemon_killed_during_an_eviction(make_daemon):
    """With room for one, acquiring B evicts A, and the daemon dies right after, mid-fill of B: the index
    still names A. The restarted daemon removes the .part, adopts nothing it cannot check (A's segment is
    gone), and both load right."""
    d = make_daemon(env={"HEARTH_BUDGET": "300M"})
    a = make_sparse_model(d.models / "a.safetensors", 64 * MB, seed=5)
    b = make_sparse_model(d.models / "b.safetensors", BIG, seed=6)
    key_a = d.acquire(a)["key"]
    assert key_a in (d.home / "index.json").read_text()
    c = _big_loader(d, b, seed=6)
    c.tell()
    _frozen_mid_fill(d)
    try:
        assert d.seg_name(key_a) not in d.shm_names()  # A's eviction happened before B's fill began
    finally:
        d.kill()
    rc, out, err = c.finish()
    assert rc == 0, err
    assert out[-1]["cached"] is False and out[-1]["same"] and out[-1]["big_ok"], out
    assert key_a in (d.home / "index.json").read_text()  # the killed daemon never wrote its index again

    d.start()  # removes the .part; A's segment is gone, so only the warm set's refill may bring A back
    d.wait_for(lambda: not d.status()["pending"], timeout=30, what="the warm set's refill")
    st = d.status()
    assert all(s["state"] == "ready" for s in st["segments"]), st["segments"]
    assert d.shm_names() == sorted(d.seg_name(s["key"]) for s in st["segments"])
    for s in st["segments"]:  # whatever is cached now holds its source's exact bytes
        assert (d.shm / d.seg_name(s["key"])).read_bytes() == Path(s["path"]).read_bytes()
    code, said, err = d.run_client(f"""
    sys.path.insert(0, {TESTS!r})
    from conftest import sample_tensors
    def small(r):
        return {{k: v for k, v in r.tensors.items() if k != "model.big"}}
    ra = load({str(a)!r})
    say(cached=ra.cached, same=same(small(ra), sample_tensors(5, 256)))
    del ra
    import gc; gc.collect()
    rb = load({str(b)!r})
    say(cached=rb.cached, same=same(small(rb), sample_tensors(6, 256)))
    """)
    assert code == 0 and said == [{"cached": True, "same": True}] * 2, (said, err)
    _assert_nothing_left(d)


# ---- a client killed ---------------------------------------------------------------------------------

def test_client_killed_while_mapping(daemon):
    """SIGKILLed with the segment open, flocked and mapped, before its tensors were made: the kernel drops
    the hold, the daemon's lease lapses with the process, and the segment goes on the next evict."""
    d = daemon
    path = make_model(d.models / "a.safetensors", seed=7, numel=250_000)
    c = d.client(f"""
    import comfyui_hearth.client.mapping as mapping
    made = mapping._views
    def stopped_here(mm, header):           # inside map_segment: fd open, flock held, file mapped
        say(mapping=True)
        sys.stdin.readline()
        return made(mm, header)
    mapping._views = stopped_here
    load({str(path)!r})
    """)
    assert c.read() == {"mapping": True}
    seg = d.segment(path)
    assert c.pid in seg["holders"]
    c.proc.kill()
    c.proc.wait()
    d.wait_for(lambda: d.segment(path)["holders"] == [], timeout=10, what="the killed client's hold to go")
    assert d.ok("POST", "/v1/evict", {"path": str(path)})["evicted"]  # evicted now, not pending
    rc, said, err = d.run_client(f"""
    r = load({str(path)!r})
    say(cached=r.cached, same=same(r.tensors, safetensors.torch.load_file({str(path)!r})))
    """)
    assert rc == 0 and said == [{"cached": True, "same": True}], (said, err)
    _assert_nothing_left(d)


def test_a_mapping_that_fails_gives_its_lease_back(in_process):
    """The client refuses the segment it was given (here: owned by another user): the load is the stock
    one, and the lease it took goes at once, not LEASE_GRACE_S later, so the segment can be evicted."""
    from comfyui_hearth.client import load

    d = in_process
    path = make_model(d.models / "a.safetensors", seed=11)
    key = d.acquire(path)["key"]
    os.chown(d.shm / d.seg_name(key), 65534, 65534)
    r = load(str(path))
    assert not r.cached and "owned by" in r.reason
    assert_same_tensors(r.tensors, reference(path))
    d.wait_for(lambda: d.segment(path)["holders"] == [], timeout=5, what="the lease of a failed mapping to go")
    assert d.ok("POST", "/v1/evict", {"path": str(path)})["evicted"]


# ---- the tmpfs fills up mid-fill ---------------------------------------------------------------------

@pytest.fixture
def tmpfs(tmp_path):
    """A tmpfs of 300 MiB of our own (pages are taken only as they are written)."""
    mnt = tmp_path / "shm"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300m,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs to fill up: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_tmpfs_filling_up_mid_fill(make_daemon, tmpfs):
    """Another process takes the tmpfs's free space while a fill is under way: the fill's next range is
    refused by posix_fallocate (shm_full, never a SIGBUS), the .part goes, the load is the stock one."""
    d = make_daemon(env={"HEARTH_BUDGET": "1G"}, shm=tmpfs)
    big = make_sparse_model(d.models / "big.safetensors", BIG, seed=8)
    c = _big_loader(d, big, seed=8)
    c.tell()
    _frozen_mid_fill(d)
    try:
        with open(tmpfs / "hog", "wb") as f:  # someone else's file takes every page left, a MiB at a time
            taken = 0
            while True:
                try:
                    os.posix_fallocate(f.fileno(), taken, MB)
                except OSError:
                    break
                taken += MB
        assert taken, "the fill had already taken the whole tmpfs"
    finally:
        d.proc.send_signal(signal.SIGCONT)
    rc, out, err = c.finish()
    assert rc == 0, err
    assert out[-1]["cached"] is False and out[-1]["same"] and out[-1]["big_ok"], out
    failure = next(f for f in d.status()["failures"] if f["path"] == str(big))
    assert failure["code"] == "shm_full", failure
    assert os.listdir(tmpfs) == ["hog"]  # the .part is gone
    (tmpfs / "hog").unlink()
    rc, said, err = d.run_client(f"""
    r = load({str(big)!r})
    say(cached=r.cached)
    """)
    assert rc == 0 and said == [{"cached": True}], (said, err)
    _assert_nothing_left(d)


# ---- the source changes mid-fill ---------------------------------------------------------------------

def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _rewrite(path: Path) -> None:
    """The same layout with other small tensors (seed 9), written over the file in place."""
    other = make_sparse_model(path.with_name("other.safetensors"), BIG, seed=9)
    with open(other, "rb") as src, open(path, "r+b") as dst:
        head = src.read(16 * MB)  # header and small tensors; the rest is the same zeros
        dst.write(head)
    other.unlink()


def _delete(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize("change", [_truncate, _rewrite, _delete], ids=["truncated", "rewritten", "deleted"])
def test_source_changed_mid_fill(daemon, change):
    """The fill notices (a short read, or the source's identity after the copy), its .part goes, the
    acquire tries once more: a rewritten file is served with its new bytes, a truncated or deleted one
    gets the stock load's own outcome. The daemon keeps no descriptor of the old file."""
    d = daemon
    big = make_sparse_model(d.models / "big.safetensors", BIG, seed=8)
    c = _big_loader(d, big, seed=9 if change is _rewrite else 8)
    c.tell()
    _frozen_mid_fill(d)
    try:
        change(big)
    finally:
        d.proc.send_signal(signal.SIGCONT)
    rc, out, err = c.finish()
    assert rc == 0, err
    got = out[-1]
    if change is _rewrite:
        assert got["cached"] is True and got["same"] and got["big_ok"], got  # the new bytes, from the cache
    else:
        assert got == _stock_outcome(big) and "raised" in got, got  # what a stock load does with it now
    assert not [n for n in d.shm_names() if n.endswith(".part")]
    if change is not _rewrite:
        assert d.status()["segments"] == []
    _assert_nothing_left(d)


# ---- a read error from the source --------------------------------------------------------------------

@pytest.fixture
def flaky_disk(tmp_path):
    """A model file on a FUSE mount of this process whose middle reads fail with EIO while `failing`."""
    from fusefile import FuseFile

    mnt = tmp_path / "flaky"
    mnt.mkdir()
    source = make_model(tmp_path / "m.safetensors", seed=10, numel=1 << 20)  # 4 MiB and a few small ones
    data = source.read_bytes()
    disk = FuseFile(mnt, "m.safetensors", data, bad=(len(data) // 2, len(data) // 2 + 4096))
    try:
        disk.mount_it()
    except OSError as e:
        pytest.skip(f"cannot mount a FUSE file system here: {e}")
    yield disk, source
    disk.unmount()


def test_read_error_from_the_source(make_daemon, tmp_path, flaky_disk):
    """The kernel answers the fill's read of the bad range with EIO: the acquire is a clear error naming
    the file and the read error (not an internal one), nothing is left behind, and the daemon holds no
    descriptor of the file. Once the read works again (a flaky disk), the next load is cached and right."""
    disk, source = flaky_disk
    models = tmp_path / "d0" / "models"
    d = make_daemon(env={"HEARTH_MODEL_DIRS": os.pathsep.join([str(models), str(disk.mount)])})
    status, doc = d.api("POST", "/v1/acquire", {"path": str(disk.path)})
    assert disk.failed_reads > 0, "the fill never read the bad range"
    assert status != 500 and doc["error"]["code"] != "internal", (status, doc)
    assert str(disk.path) in doc["error"]["message"] and "Input/output error" in doc["error"]["message"], doc
    failure = next(f for f in d.status()["failures"] if f["path"] == str(disk.path))
    assert failure["code"] == doc["error"]["code"]
    assert d.shm_names() == [] and d.status()["segments"] == []
    open_files = fd_targets(d.proc.pid)
    assert not [t for t in open_files if t.startswith(str(disk.mount))], open_files

    disk.failing.clear()
    rc, said, err = d.run_client(f"""
    r = load({str(disk.path)!r})
    say(cached=r.cached, reason=r.reason, same=same(r.tensors, safetensors.torch.load_file({str(source)!r})))
    """)
    assert rc == 0 and said == [{"cached": True, "reason": None, "same": True}], (said, err)
    _assert_nothing_left(d)
