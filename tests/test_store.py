"""The segment store through a real daemon, real tmpfs and real client processes: fill, hit, copy-on-write,
invalidation, single flight, budget and LRU, holders, pin, explicit evict, a full tmpfs."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
import safetensors.torch
from safetensors import safe_open

from conftest import UID, assert_same_tensors, fd_targets, make_model, make_sparse_model, reference, set_mtime_ns

MB = 1 << 20


def _load(path):
    from comfyui_hearth.client import load

    return load(str(path))


def hold_code(path: Path) -> str:
    """A client that loads `path`, says how, keeps its tensors until told, then checks them again."""
    return f"""
    r = load({str(path)!r})
    ref = safetensors.torch.load_file({str(path)!r})
    say(cached=r.cached, hit=r.hit, key=r.key, reason=r.reason, same=same(r.tensors, ref), pid=os.getpid())
    sys.stdin.readline()
    say(same=same(r.tensors, ref))
    """


# ---- fill and hit ---------------------------------------------------------------------------------

def test_round_trip_is_byte_exact(in_process):
    d = in_process
    meta = {"format": "pt", "modelspec.title": "tëst", "empty": ""}
    path = make_model(d.models / "rt.safetensors", seed=1, metadata=meta)
    want = safetensors.torch.load_file(str(path))

    first = _load(path)
    assert first.cached and not first.hit, first.reason
    assert_same_tensors(first.tensors, want)

    seg = d.shm / d.seg_name(first.key)
    assert seg.read_bytes() == path.read_bytes()  # a byte-exact image, header and metadata included
    assert stat.S_IMODE(seg.stat().st_mode) == 0o600
    with safe_open(str(seg), framework="pt") as f:  # anyone can open a segment with safetensors
        assert f.metadata() == meta

    assert d.acquire(path)["segment"] == str(seg)
    second = _load(path)
    assert second.cached and second.hit and second.key == first.key
    assert_same_tensors(second.tensors, want)

    # zero copy: non-empty tensors are views into one mapping, at the header's offsets
    with safe_open(str(path), framework="pt") as f:
        offsets = {k: f.get_slice(k) for k in f.keys()}
    assert offsets
    views = {k: v for k, v in second.tensors.items() if v.numel()}
    base = min(v.data_ptr() for v in views.values())
    header = path.read_bytes()
    n = int.from_bytes(header[:8], "little")
    import json

    doc = json.loads(header[8:8 + n])
    first_begin = min(doc[k]["data_offsets"][0] for k in views)
    for k, v in views.items():
        assert v.data_ptr() - base == doc[k]["data_offsets"][0] - first_begin, k


def test_file_without_tensors_and_sft_extension(in_process):
    d = in_process
    only_meta = make_model(d.models / "meta.sft", tensors={}, metadata={"a": "b"})
    r = _load(only_meta)
    assert r.cached and r.tensors == {}
    empties = make_model(d.models / "empties.safetensors",
                         tensors={"e": __import__("torch").zeros(0, 5), "f": __import__("torch").zeros(2, 0)})
    r = _load(empties)
    assert r.cached, r.reason
    assert_same_tensors(r.tensors, safetensors.torch.load_file(str(empties)))


def test_second_acquire_is_a_hit_without_reading_the_file(in_process):
    """A hit reads nothing: the daemon's read counter (which counts sendfile) barely moves while a 1 MiB
    file is served again. (chmod 000 proves nothing here: the tests run as root, which reads any file.)"""
    d = in_process
    path = make_model(d.models / "hit.safetensors", seed=3, numel=256 * 1024)  # ~1 MiB
    want = reference(path)
    a = d.acquire(path)
    assert not a["hit"]

    before = d.io()
    b = d.acquire(path)
    after = d.io()
    assert b["hit"] and b["key"] == a["key"]
    assert after["rchar"] - before["rchar"] < 64 * 1024, (before, after)  # the request, not a 1 MiB file

    got = _load(path)
    assert got.hit
    assert_same_tensors(got.tensors, want)
    assert d.status()["stats"]["fills"] == 1


def _ready_event(d, key: str) -> dict:
    [ev] = [e for e in d.ok("GET", "/v1/activity")["events"] if e.get("action") == "ready" and e["key"] == key]
    return ev


def test_a_fill_copies_what_the_page_cache_holds_from_there_and_reads_the_rest_from_disk(in_process):
    """A file the page cache holds (just written, just loaded the stock way) is copied from RAM, not read
    from the disk again with O_DIRECT; one the cache lost is read from the disk. The daemon's storage reads
    (/proc/PID/io read_bytes) and the fill's own count (the ready event) say which."""
    d = in_process
    warm = make_model(d.models / "warm.safetensors", seed=5, numel=2 * MB)  # 4 MiB of fp16 in the cache
    cold = make_model(d.models / "cold.safetensors", seed=6, numel=2 * MB)
    with open(cold, "rb") as f:  # written back, then dropped from the page cache (nobody maps it)
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    size = warm.stat().st_size
    before = d.io()
    a = d.acquire(warm)
    middle = d.io()
    b = d.acquire(cold)
    after = d.io()
    assert _ready_event(d, a["key"])["from_page_cache"] == size
    assert middle["read_bytes"] - before["read_bytes"] < MB, (before, middle)
    if after["read_bytes"] == middle["read_bytes"]:
        pytest.skip("this file system served an O_DIRECT read without a storage read (no O_DIRECT here)")
    assert _ready_event(d, b["key"])["from_page_cache"] < 4096  # the unaligned tail only
    assert after["read_bytes"] - middle["read_bytes"] >= size - 4096
    assert_same_tensors(_load(warm).tensors, reference(warm))
    assert_same_tensors(_load(cold).tensors, reference(cold))


def test_rewrite_with_mtime_set_back_is_not_served_stale(in_process):
    """Same inode, same size, mtime restored: only ctime shows the rewrite, and it must be enough."""
    d = in_process
    path = make_model(d.models / "sneaky.safetensors", seed=3, numel=256 * 1024)
    a = d.acquire(path)
    st = os.stat(path)
    other = make_model(d.root / "other.safetensors", seed=4, numel=256 * 1024).read_bytes()
    assert len(other) == st.st_size and other != path.read_bytes()
    with open(path, "r+b") as f:
        f.write(other)
    set_mtime_ns(path, st.st_mtime_ns)
    st2 = os.stat(path)
    assert (st2.st_ino, st2.st_size, st2.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)

    b = d.acquire(path)
    assert not b["hit"] and b["key"] != a["key"]
    got = _load(path)
    assert_same_tensors(got.tensors, reference(path))  # the new bytes


# ---- copy-on-write ----------------------------------------------------------------------------------

def test_copy_on_write_between_processes(daemon):
    d = daemon
    path = make_model(d.models / "cow.safetensors", seed=5)
    source = path.read_bytes()
    writer = d.client(f"""
    r = load({str(path)!r})
    t = r.tensors["model.f32"]
    t.fill_(7.0)                                   # ComfyUI patching a weight in place
    maps = [l.split()[1] for l in open("/proc/self/maps") if r.key in l]
    say(cached=r.cached, maps=maps, mine=bool((t == 7).all()))
    sys.stdin.readline()
    say(mine=bool((t == 7).all()))
    """)
    reader = d.client(f"""
    sys.stdin.readline()
    r = load({str(path)!r})
    ref = safetensors.torch.load_file({str(path)!r})
    say(cached=r.cached, hit=r.hit, same=same(r.tensors, ref), sevens=bool((r.tensors["model.f32"] == 7).any()))
    """)
    w = writer.read()
    assert w["cached"] and w["mine"]
    assert w["maps"] and all(m == "rw-p" for m in w["maps"]), w["maps"]  # private, never a shared writable map

    seg = next(d.shm.glob(f"hearth-{UID}-*"))
    assert seg.read_bytes() == source  # the cache is untouched by the write

    reader.tell()
    rc, out, err = reader.finish()
    assert rc == 0, err
    assert out == [{"cached": True, "hit": True, "same": True, "sevens": False}]

    writer.tell()
    rc, out, err = writer.finish()
    assert rc == 0, err
    assert out[-1] == {"mine": True}  # the writer still sees its own write
    assert seg.read_bytes() == source


# ---- invalidation -----------------------------------------------------------------------------------

def _rewrite(path: Path, root: Path) -> None:
    make_model(path, seed=11)


def _touch(path: Path, root: Path) -> None:
    os.utime(path)


def _replace(path: Path, root: Path) -> None:
    tmp = make_model(path.with_suffix(".tmp"), seed=12)
    os.replace(tmp, path)


@pytest.mark.parametrize("change", [_rewrite, _touch, _replace], ids=["rewritten", "touched", "replaced"])
def test_changed_file_is_refilled_and_old_segment_removed(in_process, change):
    d = in_process
    path = make_model(d.models / "inv.safetensors", seed=10)
    a = _load(path)
    assert a.cached
    old_name = d.seg_name(a.key)
    assert old_name in d.final_names()
    old_mtime = os.stat(path).st_mtime_ns
    a_key = a.key
    del a

    change(path, d.root)
    if os.stat(path).st_mtime_ns == old_mtime:  # a coarse clock may give the same tick (see the report)
        set_mtime_ns(path, old_mtime + 1_000_000)

    b = _load(path)
    assert b.cached and not b.hit and b.key != a_key
    assert_same_tensors(b.tensors, safetensors.torch.load_file(str(path)))
    assert old_name not in d.final_names()
    assert [s["key"] for s in d.status()["segments"]] == [b.key]


def test_sweep_drops_segment_of_changed_file_without_a_request(daemon):
    d = daemon
    path = make_model(d.models / "sweep.safetensors")
    key = d.acquire(path)["key"]
    os.utime(path, ns=(0, 123_456_789))
    d.wait_for(lambda: d.status()["segments"] == [], what="the sweep to drop the changed file's segment")
    assert d.seg_name(key) not in d.final_names()
    path.unlink()
    other = make_model(d.models / "gone.safetensors")
    d.acquire(other)
    other.unlink()
    d.wait_for(lambda: d.status()["segments"] == [], what="the sweep to drop a deleted file's segment")
    assert d.final_names() == []


# ---- single flight ----------------------------------------------------------------------------------

def test_concurrent_acquires_fill_once(daemon):
    d = daemon
    path = make_sparse_model(d.models / "big.safetensors", 128 * MB)  # a fill long enough to overlap
    code = f"""
    say(ready=True)
    sys.stdin.readline()
    r = load({str(path)!r})
    ref = safetensors.torch.load_file({str(path)!r})
    say(cached=r.cached, hit=r.hit, same=same(r.tensors, ref))
    """
    clients = [d.client(code) for _ in range(3)]
    for c in clients:  # every client has imported torch and waits on stdin
        assert c.read() == {"ready": True}
    for c in clients:
        c.tell()
    results = []
    for c in clients:
        rc, out, err = c.finish()
        assert rc == 0, err
        results += out[1:]  # after {"ready": true}
    assert all(r["cached"] and r["same"] for r in results), results
    stats = d.status()["stats"]
    assert stats["fills"] == 1, stats
    assert stats["hits"] + stats["misses"] == 3
    assert sum(not r["hit"] for r in results) >= 2, results  # at least two waited on the same fill


def test_a_fill_leases_its_segment_to_the_acquire_waiting_on_it(daemon):
    """Room for one model, one fill at a time: a load waits on A's fill, a second load on B's, queued. The
    moment A is ready, B's fill makes room; A must already be leased to its waiter by then, or B evicts it
    and the first load is answered a segment whose name is gone (the cycle of bench.stress that failed)."""
    import threading

    d = daemon
    a, b = (make_sparse_model(d.models / f"{n}.safetensors", 512 * MB, seed=i) for i, n in enumerate("ab"))
    d.ok("POST", "/v1/config", {"max_fills": 1, "budget": "600M"})
    answers: dict[str, tuple[int, dict]] = {}

    def acquire(name: str, path: Path) -> None:
        answers[name] = d.api("POST", "/v1/acquire", {"path": str(path), "pid": os.getpid()})

    first = threading.Thread(target=acquire, args=("a", a))
    first.start()
    d.wait_for(lambda: (s := d.segment(a)) is not None and s["state"] == "filling", what="A's fill")
    second = threading.Thread(target=acquire, args=("b", b))
    second.start()
    d.wait_for(lambda: str(b) in {f["path"] for f in d.status()["fills"]}, what="B's fill to be queued")
    first.join(60)
    second.join(60)
    status, doc = answers["a"]
    assert status == 200 and Path(doc["segment"]).exists(), (doc, d.status()["segments"])
    assert d.segment(a)["state"] == "ready" and os.getpid() in d.segment(a)["holders"]
    # B had no room but A's, leased: it is refused (its load falls back), not served by evicting A
    assert answers["b"][0] == 507 and answers["b"][1]["error"]["code"] == "over_budget", answers["b"]
    assert d.status()["stats"]["evictions"] == 0


# ---- budget, LRU, holders ---------------------------------------------------------------------------

def _sized(d, name: str, seed: int) -> Path:
    return make_model(d.models / f"{name}.safetensors", seed=seed, numel=250_000)  # ~1.0 MB


def test_budget_evicts_lru_unheld_never_held_or_pinned(make_daemon, monkeypatch):
    d = make_daemon(env={"HEARTH_BUDGET": "2.5M"})
    a, b, c, e, f = (_sized(d, n, i) for i, n in enumerate("abcef"))
    holder = d.client(hold_code(a))
    h = holder.read()
    assert h["cached"] and h["same"], h
    time.sleep(0.01)
    d.acquire(b)                            # newer than a, but nobody holds it
    assert {s["path"] for s in d.status()["segments"]} == {str(a), str(b)}

    d.acquire(c)                            # needs room: the least recently used *unheld* one goes
    segs = {s["path"]: s for s in d.status()["segments"]}
    assert set(segs) == {str(a), str(c)}
    assert holder.pid in segs[str(a)]["holders"]
    assert d.status()["stats"]["evictions"] == 1

    pin = d.ok("POST", "/v1/pin", {"path": str(c)})
    assert pin["pinned"]
    status, doc = d.api("POST", "/v1/acquire", {"path": str(e)})   # a held, c pinned: nothing can go
    assert status == 507 and doc["error"]["code"] == "over_budget", doc
    assert "budget" in doc["error"]["message"]
    assert {s["path"] for s in d.status()["segments"]} == {str(a), str(c)}
    assert d.segment(a)["state"] == "ready" and d.segment(c)["pinned"]

    # the client falls back to a stock load, with the reason
    for k, v in d.env.items():
        if k.startswith("HEARTH_"):
            monkeypatch.setenv(k, v)
    r = _load(e)
    assert not r.cached and "budget" in r.reason
    assert_same_tensors(r.tensors, safetensors.torch.load_file(str(e)))

    # the holder still has correct tensors; when it lets go, its segment becomes the LRU victim
    holder.tell()
    rc, out, err = holder.finish()
    assert rc == 0 and out[-1] == {"same": True}, err
    d.wait_for(lambda: d.segment(a)["holders"] == [], what="the holder to be gone")
    d.acquire(e)
    assert {s["path"] for s in d.status()["segments"]} == {str(c), str(e)}

    status, doc = d.api("POST", "/v1/acquire", {"path": str(make_model(d.models / "huge.safetensors",
                                                                         numel=1_000_000))})
    assert status == 507 and doc["error"]["code"] == "over_budget"


def test_one_process_switching_models_within_budget(in_process, monkeypatch):
    """ComfyUI loads model A, drops it, loads B: with room for one model, B must be cached (A evicted)."""
    import gc

    d = in_process
    d.ok("POST", "/v1/config", {"budget": "1.5M"})
    a, b = _sized(d, "a", 1), _sized(d, "b", 2)
    ra = _load(a)
    assert ra.cached
    del ra
    gc.collect()
    rb = _load(b)
    assert rb.cached, rb.reason
    assert [s["path"] for s in d.status()["segments"]] == [str(b)]
    # back and forth at once: each load's lease release (sent from a thread) reaches the daemon before the
    # next load asks for the room
    for i in range(20):
        del rb
        rb = _load(a if i % 2 == 0 else b)
        assert rb.cached, (i, rb.reason)


def test_killed_client_lease_and_hold_are_dropped(daemon):
    d = daemon
    a = make_model(d.models / "a.safetensors")
    holder = d.client(hold_code(a))
    assert holder.read()["cached"]
    seg = d.segment(a)
    assert seg["holders"] == [holder.pid]
    holder.proc.kill()
    holder.proc.wait()
    d.wait_for(lambda: d.segment(a) is None or d.segment(a)["holders"] == [], timeout=5,
               what="the killed client's hold to go")


def test_killed_client_segment_becomes_evictable(make_daemon):
    d = make_daemon(env={"HEARTH_BUDGET": "1.5M"})
    a, b = _sized(d, "a", 1), _sized(d, "b", 2)
    holder = d.client(hold_code(a))
    assert holder.read()["cached"]
    status, doc = d.api("POST", "/v1/acquire", {"path": str(b)})
    assert status == 507 and doc["error"]["code"] == "over_budget"
    holder.proc.kill()
    holder.proc.wait()
    d.wait_for(lambda: d.segment(a)["holders"] == [], timeout=5, what="the killed client's hold to go")
    d.acquire(b)
    assert [s["path"] for s in d.status()["segments"]] == [str(b)]


def test_explicit_evict_of_held_segment(daemon):
    d = daemon
    a = make_model(d.models / "held.safetensors", numel=250_000)
    holder = d.client(hold_code(a))
    h = holder.read()
    assert h["cached"]
    name = d.seg_name(h["key"])
    used = d.status()["used"]

    ans = d.ok("POST", "/v1/evict", {"path": str(a)})
    assert ans["evicted"] == []
    assert [p["path"] for p in ans["pending"]] == [str(a)] and holder.pid in ans["pending"][0]["holders"]
    assert name not in d.final_names()               # no new holder can map it
    st = d.status()
    assert st["used"] == used                         # the budget counts it until the holders let go
    assert [s["state"] for s in st["segments"]] == ["stale"]

    # a new load refills under the same key, while the old copy is still held
    b = d.acquire(a)
    assert not b["hit"] and b["key"] == h["key"] and name in d.final_names()
    assert d.status()["used"] == 2 * used

    holder.tell()
    rc, out, err = holder.finish()
    assert rc == 0 and out[-1] == {"same": True}, err  # the holder read correct tensors after the evict
    d.wait_for(lambda: d.status()["used"] == used, timeout=5, what="the stale copy to be freed")
    # the memory is really freed: the daemon keeps no descriptor of the unlinked copy
    assert not [t for t in fd_targets(d.proc.pid) if name in t and "deleted" in t]
    assert [s["state"] for s in d.status()["segments"]] == ["ready"]


def test_pin_prevents_lru_eviction(make_daemon):
    d = make_daemon(env={"HEARTH_BUDGET": "2.5M"})
    a, b, c, e = (_sized(d, n, i) for i, n in enumerate("abce"))
    assert d.ok("POST", "/v1/pin", {"path": str(a)})["pinned"]
    d.wait_for(lambda: (s := d.segment(a)) and s["state"] == "ready", what="pin to fill")
    assert d.segment(a)["pinned"]
    time.sleep(0.01)
    d.acquire(b)
    d.acquire(c)                                      # a is the oldest, but pinned: b goes
    assert {s["path"] for s in d.status()["segments"]} == {str(a), str(c)}
    d.ok("POST", "/v1/pin", {"path": str(a), "pinned": False})
    assert not d.segment(a)["pinned"]
    d.acquire(e)                                      # now a is the LRU victim
    assert {s["path"] for s in d.status()["segments"]} == {str(c), str(e)}
    assert d.ok("GET", "/v1/config")["pinned"] == []


def test_budget_lowered_by_config_shrinks_cache(daemon):
    d = daemon
    paths = [_sized(d, f"m{i}", i) for i in range(3)]
    for p in paths:
        d.acquire(p)
        time.sleep(0.01)
    cfg = d.ok("POST", "/v1/config", {"budget": "1.5M"})
    assert cfg["budget"] == "1.5M" and cfg["budget_bytes"] == int(1.5 * MB)
    assert [s["path"] for s in d.status()["segments"]] == [str(paths[2])]  # the most recent stays


# ---- a full tmpfs -----------------------------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "small-shm"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs to fill up: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_tmpfs_is_shm_full_and_client_falls_back(make_daemon, small_tmpfs, monkeypatch):
    d = make_daemon(env={"HEARTH_BUDGET": "1G"}, shm=small_tmpfs)
    big = make_model(d.models / "big.safetensors", numel=2_500_000)  # 10 MB > 8 MB of tmpfs
    status, doc = d.api("POST", "/v1/acquire", {"path": str(big)})
    assert status == 507 and doc["error"]["code"] == "shm_full", doc
    assert str(small_tmpfs) in doc["error"]["message"]
    assert os.listdir(small_tmpfs) == []              # nothing left behind
    for k, v in d.env.items():
        if k.startswith("HEARTH_"):
            monkeypatch.setenv(k, v)
    r = _load(big)
    assert not r.cached and r.reason
    assert_same_tensors(r.tensors, safetensors.torch.load_file(str(big)))
    # the daemon keeps serving, and fits what fits
    small = make_model(d.models / "small.safetensors")
    assert _load(small).cached


def test_full_tmpfs_evicts_unheld_segments_to_make_room(make_daemon, small_tmpfs):
    d = make_daemon(env={"HEARTH_BUDGET": "1G"}, shm=small_tmpfs)
    a = make_model(d.models / "a.safetensors", numel=1_250_000)   # 5 MB
    b = make_model(d.models / "b.safetensors", numel=1_250_000, seed=1)
    d.acquire(a)
    d.acquire(b)   # the budget allows both; the tmpfs holds one: a, unheld, makes room
    assert [s["path"] for s in d.status()["segments"]] == [str(b)]
    holder = d.client(hold_code(b))
    assert holder.read()["cached"]
    status, doc = d.api("POST", "/v1/acquire", {"path": str(a)})   # b is held: no room
    assert status == 507 and doc["error"]["code"] == "shm_full", doc


# ---- ownership, symlinked blobs, evicting during a fill, pinned by config ------------------------------

def test_symlinked_blobs_are_allowed_inside_a_root(in_process):
    """The Hugging Face cache layout: snapshots/<rev>/model.safetensors -> ../../blobs/<sha256>."""
    d = in_process
    blob = make_model(d.models / "hf" / "blobs" / "9f86d081884c7d659a2feaa0c55ad015", seed=21)
    link = d.models / "hf" / "snapshots" / "main" / "model.safetensors"
    link.parent.mkdir(parents=True)
    os.symlink(os.path.relpath(blob, link.parent), link)
    r = _load(link)
    assert r.cached, r.reason
    assert_same_tensors(r.tensors, reference(blob))
    # the blob itself, named without a model extension, is still not a model file
    status, doc = d.api("POST", "/v1/acquire", {"path": str(blob)})
    assert status == 403 and doc["error"]["code"] == "not_allowed"
    # and a model-named link to a non-model file outside the roots is still refused
    os.symlink("/etc/hostname", d.models / "host.safetensors")
    status, doc = d.api("POST", "/v1/acquire", {"path": str(d.models / "host.safetensors")})
    assert status == 403 and doc["error"]["code"] == "not_allowed"


def test_client_refuses_a_segment_owned_by_another_user(in_process):
    """A segment that is not the user's own (a planted file) is never mapped: stock load instead."""
    d = in_process
    path = make_model(d.models / "own.safetensors", seed=22)
    key = d.acquire(path)["key"]
    os.chown(d.shm / d.seg_name(key), 65534, 65534)
    r = _load(path)
    assert not r.cached and "owned by" in r.reason
    assert_same_tensors(r.tensors, reference(path))


def test_restart_leaves_other_users_files_alone(make_daemon):
    d = make_daemon()
    d.stop()
    planted = d.shm / d.seg_name("0123456789abcdef")
    planted.write_bytes(b"x" * 64)
    os.chown(planted, 65534, 65534)
    d.start()  # (as another user, unlinking it in /dev/shm would fail and stop the start)
    assert planted.exists() and d.status()["segments"] == []
    planted.unlink()


def test_evict_during_a_fill_does_not_claim_it(daemon):
    d = daemon
    big = make_sparse_model(d.models / "big.safetensors", 512 * MB)
    d.ok("POST", "/v1/preload", {"paths": [str(big)]})
    ans = d.ok("POST", "/v1/evict", {"all": True})
    d.wait_for(lambda: d.segment(big) and d.segment(big)["state"] == "ready", what="the fill to end")
    if ans["evicted"]:
        pytest.fail(f"evict answered {ans} but the fill went on and published the segment")
    if ans.get("filling"):
        assert [f["path"] for f in ans["filling"]] == [str(big)]


def test_pinned_set_by_config_protects_cached_models(make_daemon):
    d = make_daemon(env={"HEARTH_BUDGET": "2.5M"})
    a, b, c = (_sized(d, n, i) for i, n in enumerate("abc"))
    d.acquire(a)
    time.sleep(0.01)
    d.acquire(b)
    d.ok("POST", "/v1/config", {"pinned": [str(a)]})
    assert d.segment(a)["pinned"]
    d.acquire(c)  # a is the least recently used but pinned: b goes
    assert {s["path"] for s in d.status()["segments"]} == {str(a), str(c)}


def test_concurrent_fills_into_a_tight_tmpfs(make_daemon, small_tmpfs):
    """Two 5 MB fills at once into 8 MB: one fits; the other is shm_full (from the free-space check or
    from posix_fallocate, whichever the timing reaches) or, if the first had already ended, evicts it.
    Never both, and nothing half-written is left."""
    from concurrent.futures import ThreadPoolExecutor

    d = make_daemon(env={"HEARTH_BUDGET": "1G"}, shm=small_tmpfs)
    a = make_model(d.models / "a.safetensors", numel=1_250_000)
    b = make_model(d.models / "b.safetensors", numel=1_250_000, seed=1)
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda p: d.api("POST", "/v1/acquire", {"path": str(p)}), (a, b)))
    codes = sorted(doc.get("error", {}).get("code", "ok") for _, doc in answers)
    assert codes in (["ok", "shm_full"], ["ok", "ok"]), answers
    st = d.status()
    (seg,) = st["segments"]
    assert d.shm_names() == [d.seg_name(seg["key"])]
    assert st["stats"]["evictions"] == (1 if codes == ["ok", "ok"] else 0)


def _most_filling_at_once(d, paths: list[Path]) -> tuple[int, int]:
    """Preload `paths` and watch until all are ready: (most fills under way at once, most queued at once)."""
    d.ok("POST", "/v1/preload", {"paths": [str(p) for p in paths]})
    most_filling = most_queued = 0
    deadline = time.monotonic() + 120
    while True:
        st = d.status()
        filling = sum(s["state"] == "filling" for s in st["segments"])
        most_filling = max(most_filling, filling)
        most_queued = max(most_queued, len(st["pending"]) - filling)
        if sum(s["state"] == "ready" for s in st["segments"]) == len(paths):
            return most_filling, most_queued
        assert time.monotonic() < deadline, st
        time.sleep(0.002)


def test_max_fills_applies_while_the_daemon_runs(daemon):
    d = daemon
    bigs = [make_sparse_model(d.models / f"big{i}.safetensors", 256 * MB, seed=i) for i in range(3)]
    d.ok("POST", "/v1/config", {"max_fills": 1})
    filling, queued = _most_filling_at_once(d, bigs)
    assert filling == 1 and queued >= 1, (filling, queued)
    d.ok("POST", "/v1/evict", {"all": True})
    d.ok("POST", "/v1/config", {"max_fills": 3})
    filling, _ = _most_filling_at_once(d, bigs)
    assert filling >= 2, filling


def test_tmpfs_room_is_promised_whole_and_taken_per_range(small_tmpfs, monkeypatch):
    """daemon/room.py on a real 8 MB tmpfs: a promise counts against the next fill before any page is
    allocated; a range the tmpfs can no longer hold is ShmFull, not a SIGBUS later; close() returns the rest."""
    from comfyui_hearth.core.errors import ShmFull
    from comfyui_hearth.daemon.room import Room

    monkeypatch.setenv("HEARTH_SHM_DIR", str(small_tmpfs))
    a = os.open(small_tmpfs / "a.part", os.O_RDWR | os.O_CREAT, 0o600)
    b = os.open(small_tmpfs / "b.part", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        first = Room(a, 5 * MB, "a")
        assert os.fstat(a).st_size == 5 * MB and os.fstat(a).st_blocks == 0  # length set, nothing allocated
        with pytest.raises(ShmFull, match="no room for b"):
            Room(b, 5 * MB, "b")  # 8 MB free, but 5 MB of them are promised to a
        first.take(0, 1 * MB)
        (small_tmpfs / "other").write_bytes(b"x" * (6 * MB))  # someone else takes the tmpfs meanwhile
        with pytest.raises(ShmFull):
            first.take(1 * MB, 5 * MB)
        first.close()
        (small_tmpfs / "other").unlink()
        second = Room(b, 6 * MB, "b")  # a's unused promise is back: 7 MB free, none promised
        second.take(0, 6 * MB)
        second.close()
    finally:
        os.close(a)
        os.close(b)
