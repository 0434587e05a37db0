"""Crashes and restarts: a daemon killed mid-fill, clients outliving their daemon, re-adoption on restart."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from conftest import UID, Client, assert_same_tensors, make_model, make_sparse_model, reference

MB = 1 << 20
TESTS = str(Path(__file__).parent)


def _load_caught_mid_fill(d, seed: int, env: dict | None = None) -> tuple[Path, Client, str]:
    """A client loads a 1 GiB sparse model; returns (model, client, .part name) once the daemon's fill of
    it is under way. The client says cached, reason, same (small tensors right), big_ok and pid, then
    waits for a line before it exits."""
    big = make_sparse_model(d.models / "big.safetensors", 1024 * MB, seed=seed)
    c = d.client(f"""
    sys.path.insert(0, {TESTS!r})
    from conftest import sample_tensors
    want = sample_tensors({seed}, 256)
    say(ready=True)
    sys.stdin.readline()
    r = load({str(big)!r})
    small = {{k: v for k, v in r.tensors.items() if k != "model.big"}}
    say(cached=r.cached, reason=r.reason, same=same(small, want), pid=os.getpid(),
        big_ok=r.tensors["model.big"].shape == (1024 << 20,) and not r.tensors["model.big"][::4096].any())
    sys.stdin.readline()
    """, env=env)
    assert c.read() == {"ready": True}
    c.tell()
    deadline = time.monotonic() + 30
    part = None
    while part is None and time.monotonic() < deadline:
        part = next((n for n in os.listdir(d.shm) if n.endswith(".part")), None)
        if part is None:
            time.sleep(0.0005)
    assert part, "the fill never started"
    return big, c, part


def test_daemon_killed_mid_fill(daemon):
    d = daemon
    _, c, part = _load_caught_mid_fill(d, seed=7)
    d.proc.send_signal(signal.SIGSTOP)  # freeze it mid-fill: what does the tmpfs show now?
    try:
        assert d.final_names() == [], "a final name is visible before its fill ended"
        assert part in d.shm_names()
    finally:
        d.kill()  # SIGKILL, no clean-up of any kind

    c.tell()
    rc, out, err = c.finish()
    assert rc == 0, err
    assert out[1:] == [{"cached": False, "reason": out[-1]["reason"], "same": True, "big_ok": True,
                        "pid": c.pid}], out
    assert "did not answer" in out[-1]["reason"]
    assert "loading without the cache" in err  # the one log line saying why
    assert d.final_names() == [] and part in d.shm_names()  # still no final name

    d.start()
    assert d.shm_names() == []  # the restarted daemon removed the .part
    assert d.status()["segments"] == []


def test_a_frozen_daemon_never_hangs_a_load(daemon):
    """SIGSTOP mid-fill: the waiting client gives up after HEARTH_STALL_S and loads the stock way."""
    d = daemon
    big, c, _ = _load_caught_mid_fill(d, seed=8, env={"HEARTH_STALL_S": "3"})
    d.proc.send_signal(signal.SIGSTOP)
    try:
        got = c.read(timeout=60)
    finally:
        d.proc.send_signal(signal.SIGCONT)
    assert got["cached"] is False and got["same"] is True and got["big_ok"] is True, got
    assert "neither answered nor filled for 3 s" in got["reason"], got

    # Thawed, the daemon ends its fill and serves the file; the abandoned acquire, answered at last,
    # gives its lease back although its process lives on (a lease alone would last LEASE_GRACE_S).
    rc, out, err = d.run_client(f"""
    r = load({str(big)!r})
    say(cached=r.cached)
    """)
    assert rc == 0 and out == [{"cached": True}], (out, err)
    deadline = time.monotonic() + 10
    while True:
        seg = next(s for s in d.status()["segments"] if s["path"] == str(big))
        if seg["holders"] == [] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert seg["state"] == "ready" and seg["holders"] == [], seg
    c.tell()
    rc, _, err = c.finish()
    assert rc == 0 and "loading without the cache" in err, err


def test_clients_outlive_a_killed_daemon(daemon):
    d = daemon
    a = make_model(d.models / "a.safetensors", seed=2)
    b = make_model(d.models / "b.safetensors", seed=3)
    c = d.client(f"""
    ref = safetensors.torch.load_file({str(a)!r})
    r = load({str(a)!r})
    say(cached=r.cached)
    sys.stdin.readline()                       # the daemon is killed meanwhile
    say(same=same(r.tensors, ref))
    r2 = load({str(b)!r})
    say(cached=r2.cached, same=same(r2.tensors, safetensors.torch.load_file({str(b)!r})), reason=r2.reason)
    sys.stdin.readline()                       # the daemon is back
    say(holding=True)
    sys.stdin.readline()
    """)
    assert c.read() == {"cached": True}
    d.kill()
    c.tell()
    assert c.read() == {"same": True}
    fallback = c.read()
    assert fallback["cached"] is False and fallback["same"] is True and "gone" in fallback["reason"]

    # a new daemon re-adopts the segment the client still maps, and sees the client as its holder
    d.start()
    seg = d.segment(a)
    assert seg and seg["state"] == "ready" and c.pid in seg["holders"]
    c.tell()
    assert c.read() == {"holding": True}
    ans = d.ok("POST", "/v1/evict", {"path": str(a)})
    assert [p["path"] for p in ans["pending"]] == [str(a)]
    c.tell()
    rc, _, err = c.finish()
    assert rc == 0, err
    d.wait_for(lambda: d.status()["segments"] == [], timeout=5, what="the held copy to be freed")


def test_restart_re_adopts_valid_segments_and_removes_the_rest(make_daemon, in_process_env):
    d = make_daemon()
    keep = make_model(d.models / "keep.safetensors", seed=1)
    touched = make_model(d.models / "touched.safetensors", seed=2)
    corrupt = make_model(d.models / "corrupt.safetensors", seed=3)
    deleted = make_model(d.models / "deleted.safetensors", seed=4)
    keys = {p.name: d.acquire(p)["key"] for p in (keep, touched, corrupt, deleted)}
    d.acquire(keep)  # a hit, remembered across the restart
    d.ok("POST", "/v1/config", {"warm_set": "off"})  # no refill of what is removed (test_warmset: with it)
    assert d.stop() == 0
    names = set(d.final_names())
    assert names == {d.seg_name(k) for k in keys.values()}  # segments outlive their daemon

    os.utime(touched, ns=(0, 10**9))                          # the source changed
    seg = d.shm / d.seg_name(keys["corrupt.safetensors"])
    with open(seg, "r+b") as f:                               # the segment itself was damaged
        f.write(b"\xff" * 8)
    deleted.unlink()                                          # the source is gone
    junk = d.shm / d.seg_name("0123456789abcdef")             # not in the index
    junk.write_bytes(b"x" * 100)
    part = d.shm / f".{d.prefix}fedcba9876543210.999999.part"
    part.write_bytes(b"y")
    other_home = d.shm / f"hearth-{UID}-abcdef-0123456789abcdef"  # another HEARTH_HOME's: not ours
    other_home.write_bytes(b"z")

    d.start()
    assert d.shm_names() == sorted([d.seg_name(keys["keep.safetensors"]), other_home.name])
    st = d.status()
    assert [(s["path"], s["state"], s["hits"]) for s in st["segments"]] == [(str(keep), "ready", 1)]
    assert st["stats"]["fills"] == 0

    a = d.acquire(keep)
    assert a["hit"] and a["key"] == keys["keep.safetensors"]
    assert d.status()["stats"]["fills"] == 0
    with in_process_env(d):
        from comfyui_hearth.client import load

        r = load(str(keep))
        assert r.cached and r.hit
        assert_same_tensors(r.tensors, reference(keep))
    other_home.unlink()


def test_an_acquire_is_answered_once_the_index_names_its_segment(daemon):
    """A fill answers its load only once index.json names the segment: a daemon killed right after the
    answer is re-adopted by the next one, not refilled."""
    d = daemon
    paths = [make_model(d.models / f"m{i}.safetensors", seed=i) for i in range(30)]
    for p in paths:
        key = d.acquire(p)["key"]
        assert key in json.loads((d.home / "index.json").read_text()), p
    d.kill()
    d.start()
    st = d.status()
    assert sorted(s["path"] for s in st["segments"]) == sorted(map(str, paths)) and st["stats"]["fills"] == 0


def test_pinned_models_are_refilled_at_start(make_daemon):
    d = make_daemon()
    a = make_model(d.models / "a.safetensors")
    d.ok("POST", "/v1/pin", {"path": str(a)})
    d.wait_for(lambda: (s := d.segment(a)) and s["state"] == "ready", what="the pin to fill")
    d.stop()
    for n in d.final_names():  # as after a reboot: the tmpfs is empty, the settings remain
        (d.shm / n).unlink()
    d.start()
    d.wait_for(lambda: (s := d.segment(a)) and s["state"] == "ready", what="the pinned model to refill")
    assert d.segment(a)["pinned"] and d.status()["stats"]["fills"] == 1
    assert json.loads((d.home / "config.json").read_text())["pinned"] == [str(a)]


def test_registered_roots_are_sent_again_after_a_restart(daemon, in_process_env, tmp_path):
    d = daemon
    path = make_model(tmp_path / "comfy" / "m.safetensors")
    import importlib

    cl = importlib.import_module("comfyui_hearth.client.load")
    with in_process_env(d):
        cl.register_roots([str(path.parent)])
        try:
            assert cl.load(str(path)).cached
            d.stop()
            d.start()
            r = cl.load(str(path))
            assert r.cached and r.hit, r.reason  # re-adopted, and the root is known again
        finally:
            cl._roots.clear()
            cl._roots_sent_to = None


def test_sigterm_during_a_fill_stops_and_leaves_nothing_unchecked(daemon):
    d = daemon
    big = make_sparse_model(d.models / "big.safetensors", 768 * MB)
    small = make_model(d.models / "small.safetensors")
    d.acquire(small)
    d.ok("POST", "/v1/preload", {"paths": [str(big)]})
    d.wait_for(lambda: any(n.endswith(".part") for n in d.shm_names()), timeout=10, what="the fill to start")
    assert d.stop() == 0
    d.start()
    # the small model is re-adopted; the interrupted fill left neither a .part nor an unindexed segment
    assert [s["path"] for s in d.status()["segments"]] == [str(small)]
    assert d.shm_names() == [d.seg_name(d.segment(small)["key"])]
