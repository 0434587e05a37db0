"""The warm set (refill after a reboot), fill priorities, and holds for queued prompts, on a real daemon.

"A reboot" is a stopped daemon whose segments are removed from its tmpfs folder before it starts again:
what /dev/shm looks like after one. Fills are caught mid-way with the warm set paused (config.json), so
nothing here depends on how fast the machine copies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil

from conftest import make_model, make_sparse_model

MB = 1 << 20


def _reboot(d, keep: tuple = ()) -> None:
    """Stop the daemon, remove its segments but those of `keep` (paths), start it again."""
    keys = {d.segment(p)["key"] for p in keep}
    assert d.stop() == 0
    for name in d.final_names():
        if not any(name.endswith(k) for k in keys):
            (d.shm / name).unlink()
    d.start()


def _configure(d, **settings) -> None:
    """Write settings into config.json of a stopped daemon (read when it starts)."""
    path = d.home / "config.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**doc, **settings}))


def _warm(d) -> dict:
    return d.status()["warm_set"]


def _wait_warm(d, state: str, timeout: float = 30.0) -> dict:
    return d.wait_for(lambda: (w := _warm(d))["state"] == state and w, timeout, f"warm set {state}")


def _remembered(d) -> set[str]:
    doc = json.loads((d.home / "index.json").read_text())
    return {r["source"]["path"] for r in doc.values() if r.get("resident") is False}


def _fills(d) -> dict[str, dict]:
    return {os.path.basename(f["path"]): f for f in d.status()["fills"]}


def _idle_class_threads(d) -> int:
    """How many of the daemon's threads read in the idle I/O class (Linux keeps it per thread)."""
    n = 0
    for t in psutil.Process(d.proc.pid).threads():
        try:
            n += psutil.Process(t.id).ionice().ioclass == psutil.IOPRIO_CLASS_IDLE
        except psutil.Error:
            pass  # a thread that ended meanwhile
    return n


def test_reboot_refills_pinned_first_then_most_recent_and_skips_changed_files(daemon):
    d = daemon
    m = {n: make_model(d.models / f"{n}.safetensors", seed=i)
         for i, n in enumerate(("pinned", "old", "changed", "gone", "mid", "new"))}
    d.ok("POST", "/v1/pin", {"path": str(m["pinned"])})
    d.wait_for(lambda: (s := d.segment(m["pinned"])) and s["state"] == "ready", what="the pin's fill")
    for n in ("old", "changed", "gone", "mid", "new"):
        d.acquire(m[n])
        time.sleep(0.01)  # distinct last uses
    d.acquire(m["mid"])   # a hit: mid is now the most recent, and its hit is remembered
    before = {s["path"]: (s["hits"], s["last_use"]) for s in d.status()["segments"]}
    assert d.stop() == 0
    for name in d.final_names():
        (d.shm / name).unlink()
    os.utime(m["changed"], ns=(0, 10**9))
    m["gone"].unlink()

    d.start()
    w = _wait_warm(d, "done")
    assert [os.path.basename(x["path"]) for x in w["done"]] == [
        "pinned.safetensors", "mid.safetensors", "new.safetensors", "old.safetensors"]
    skipped = {os.path.basename(x["path"]): x["reason"] for x in w["skipped"]}
    assert set(skipped) == {"changed.safetensors", "gone.safetensors"}
    assert "changed since it was cached (mtime_ns)" in skipped["changed.safetensors"]
    assert "gone" in skipped["gone.safetensors"]
    assert w["summary"] == "Warm set: 4 models refilled at start, 2 skipped"
    st = d.status()
    assert st["stats"]["fills"] == 4
    # The refill brings back the models, not new uses of them: hits and last uses are as they were.
    assert {s["path"]: (s["hits"], s["last_use"]) for s in st["segments"]} == {
        p: v for p, v in before.items() if os.path.basename(p) not in skipped}
    assert _remembered(d) == set()  # refilled or skipped: nothing is left to bring back
    for s in st["segments"]:  # byte-exact images of their sources
        assert (d.shm / d.seg_name(s["key"])).read_bytes() == open(s["path"], "rb").read()
    assert d.acquire(m["new"])["hit"]


def test_warm_set_size_keeps_the_most_recent_that_fit(make_daemon):
    d = make_daemon()
    old, mid, new = (make_sparse_model(d.models / f"{n}.safetensors", 32 * MB, seed=i)
                     for i, n in enumerate(("old", "mid", "new")))
    for p in (old, mid, new):
        d.acquire(p)
        time.sleep(0.01)
    d.stop()
    _configure(d, warm_set_size="70M")  # two of the three
    d.start()
    _reboot(d, keep=(new,))  # new's segment survives: re-adopted, it counts against the size
    w = _wait_warm(d, "done")
    assert [os.path.basename(x["path"]) for x in w["done"]] == ["mid.safetensors"]
    [out] = w["skipped"]
    assert out["path"] == str(old) and "outside the warm set" in out["reason"] and "warm_set_size" in out["reason"]
    assert {s["path"] for s in d.status()["segments"]} == {str(mid), str(new)}
    assert w["size"] == 70 * MB


def test_a_paused_refill_waits_at_idle_priority_survives_a_restart_and_resumes(make_daemon):
    d = make_daemon()
    a, b = (make_sparse_model(d.models / f"{n}.safetensors", 64 * MB, seed=i) for i, n in enumerate("ab"))
    d.acquire(a)
    d.acquire(b)
    d.stop()
    _configure(d, warm_set="paused")
    d.start()
    _reboot(d)
    w = _wait_warm(d, "paused")
    assert w["current"]["path"] == str(b) and [q["path"] for q in w["queued"]] == [str(a)]
    d.wait_for(lambda: _fills(d).get("b.safetensors", {}).get("state") == "paused", what="b's fill to pause")
    assert _fills(d)["b.safetensors"]["priority"] == "warm_set"
    d.wait_for(lambda: _idle_class_threads(d) > 0, what="the copy threads in the idle I/O class")
    time.sleep(0.5)
    assert d.segment(b)["filled"] == 0  # paused before its first range
    assert w["summary"].startswith("Warm set: paused, 2 models left")

    assert d.stop() == 0  # stopping ends the held fill: no .part is left, and both stay remembered
    assert d.final_names() == [] and d.shm_names() == []
    assert _remembered(d) == {str(a), str(b)}
    d.start()
    _wait_warm(d, "paused")
    r = d.cli("config", "warm_set", "on")
    assert r.returncode == 0, r.stderr
    w = _wait_warm(d, "done")
    assert [x["path"] for x in w["done"]] == [str(b), str(a)]
    assert _idle_class_threads(d) == 0
    r = d.cli("status")
    assert "Warm set: 2 models refilled at start" in r.stdout, r.stdout


def test_a_load_passes_a_paused_refill_and_raises_it_when_it_wants_that_model(make_daemon):
    """max_fills 1, and the refill holds the slot: a waited-on fill still runs (slots of its own), and an
    acquire of the model being refilled raises that very fill (one fill, no second copy)."""
    d = make_daemon()
    a, b, c = (make_sparse_model(d.models / f"{n}.safetensors", 64 * MB, seed=i) for i, n in enumerate("abc"))
    for p in (a, b, c):
        d.acquire(p)
    d.stop()
    _configure(d, warm_set="paused", max_fills=1)
    d.start()
    _reboot(d)
    d.wait_for(lambda: _fills(d).get("c.safetensors", {}).get("state") == "paused", what="c's refill to hold")

    t0 = time.monotonic()
    got = d.acquire(a)  # queued last by the warm set; a load wants it now
    assert not got["hit"] and time.monotonic() - t0 < 20
    assert _fills(d)["c.safetensors"]["state"] == "paused"  # still held, still in its slot
    assert d.status()["stats"]["fills"] == 1

    got = d.acquire(c)  # the model being refilled: the same fill, raised
    assert not got["hit"]
    st = d.status()
    assert st["stats"]["fills"] == 2 and "raised to urgent" in d.log()
    assert st["warm_set"]["current"]["path"] == str(b)  # the refill went on to the next one, still paused
    d.cli("config", "warm_set", "on")
    w = _wait_warm(d, "done")
    how = {os.path.basename(x["path"]): x["how"] for x in w["done"]}
    assert how["a.safetensors"] == "in the cache already" and set(how) == {"a.safetensors", "b.safetensors",
                                                                           "c.safetensors"}
    assert d.status()["stats"]["fills"] == 3


def test_a_load_that_needs_the_room_of_a_refill_aborts_it(make_daemon):
    d = make_daemon(env={"HEARTH_BUDGET": "100M"})
    a = make_sparse_model(d.models / "a.safetensors", 64 * MB, seed=1)
    b = make_sparse_model(d.models / "b.safetensors", 64 * MB, seed=2)
    d.acquire(a)
    d.stop()
    _configure(d, warm_set="paused")
    d.start()
    _reboot(d)
    d.wait_for(lambda: _fills(d).get("a.safetensors", {}).get("state") == "paused", what="a's refill to hold")
    got = d.acquire(b)  # a's refill holds 64 of the 100 MB: it gives way
    assert not got["hit"]
    w = _wait_warm(d, "done")
    [skip] = w["skipped"]
    assert skip["path"] == str(a) and "gave its room to" in skip["reason"] and str(b) in skip["reason"]
    assert [s["path"] for s in d.status()["segments"]] == [str(b)]
    assert not any(n.endswith(".part") for n in d.shm_names())
    assert _remembered(d) == set()


def test_turned_off_the_refill_stops_and_is_remembered_and_evict_forgets(make_daemon):
    d = make_daemon()
    a, b, c = (make_sparse_model(d.models / f"{n}.safetensors", 64 * MB, seed=i) for i, n in enumerate("abc"))
    for p in (a, b, c):
        d.acquire(p)
    d.stop()
    _configure(d, warm_set="paused")
    d.start()
    _reboot(d)
    d.wait_for(lambda: _fills(d).get("c.safetensors", {}).get("state") == "paused", what="c's refill to hold")
    d.ok("POST", "/v1/evict", {"path": str(b)})  # the user does not want b back
    d.ok("POST", "/v1/config", {"warm_set": "off"})
    d.wait_for(lambda: _warm(d)["state"] == "off", what="the refill to stop")
    d.wait_for(lambda: not any(n.endswith(".part") for n in d.shm_names()), what="c's .part to go")
    assert d.status()["segments"] == [] and d.status()["stats"]["fills"] == 0
    assert _warm(d)["summary"] == "Warm set: off"
    assert _remembered(d) == {str(a), str(c)}
    d.ok("POST", "/v1/config", {"warm_set": "on"})
    w = _wait_warm(d, "done")
    assert [x["path"] for x in w["done"]] == [str(c), str(a)]
    assert {s["path"] for s in d.status()["segments"]} == {str(a), str(c)}


def test_warm_set_setting_values(daemon):
    d = daemon
    for given, stored in (("pause", "paused"), ("resume", "on"), (False, "off"), ("ON", "on")):
        assert d.ok("POST", "/v1/config", {"warm_set": given})["warm_set"] == stored
    status, doc = d.api("POST", "/v1/config", {"warm_set": "sometimes"})
    assert status == 400 and "warm_set must be one of on, paused, off" in doc["error"]["message"]
    status, doc = d.api("POST", "/v1/config", {"warm_set_size": "lots"})
    assert status == 400 and "not a size" in doc["error"]["message"]
    assert d.ok("POST", "/v1/config", {"warm_set_size": "1G"})["warm_set_size"] == "1G"
    assert _warm(d)["size"] == min(1 << 30, d.status()["budget"])


# ---- holds: what queued prompts name --------------------------------------------------------------

def test_held_models_are_kept_from_background_fills_and_go_last_for_a_load(make_daemon):
    d = make_daemon(env={"HEARTH_BUDGET": "100M"})
    a, b, c = (make_sparse_model(d.models / f"{n}.safetensors", 40 * MB, seed=i) for i, n in enumerate("abc"))
    d.acquire(a)
    d.acquire(b)
    assert d.ok("POST", "/v1/hold", {"hold": "p1", "paths": [str(a)]})["ready"][0]["path"] == str(a)
    got = d.ok("POST", "/v1/hold", {"hold": "p2", "paths": [str(c)], "pid": os.getpid()})
    assert [q["path"] for q in got["queued"]] == [str(c)]  # prefetched: room made by evicting b, not a
    d.wait_for(lambda: (s := d.segment(c)) and s["state"] == "ready", what="c's prefetch")
    assert {s["path"] for s in d.status()["segments"]} == {str(a), str(c)}

    got = d.ok("POST", "/v1/hold", {"hold": "p3", "paths": [str(b)]})
    assert [w["path"] for w in got["waits"]] == [str(b)] and got["queued"] == []  # a and c are kept
    assert d.status()["failures"] == [] and d.status()["pending"] == []

    assert not d.acquire(b)["hit"]  # a load comes first: it evicts the least recently used held one
    assert {s["path"] for s in d.status()["segments"]} == {str(b), str(c)}
    assert d.ok("POST", "/v1/hold", {"hold": "p1", "paths": []}) == {"hold": "p1", "released": True}
    assert {h["id"] for h in d.status()["holds"]} == {"p2", "p3"}


def test_holds_lapse_and_end_with_their_process(daemon):
    d = daemon
    a = make_model(d.models / "a.safetensors")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    d.ok("POST", "/v1/hold", {"hold": "short", "paths": [str(a)], "seconds": 0.5})
    d.ok("POST", "/v1/hold", {"hold": "dead", "paths": [str(a)], "pid": gone.pid})
    d.ok("POST", "/v1/hold", {"hold": "live", "paths": [str(a)], "pid": os.getpid()})
    d.wait_for(lambda: {h["id"] for h in d.status()["holds"]} == {"live"}, timeout=10,
               what="the lapsed and orphaned holds to go")
    for body, says in (({"paths": [str(a)]}, "hold must be a non-empty string"),
                       ({"hold": "x", "paths": [str(a)], "seconds": -1}, "seconds must be a number"),
                       ({"hold": "x", "paths": 5}, "paths must be a list")):
        status, doc = d.api("POST", "/v1/hold", body)
        assert status == 400 and says in doc["error"]["message"], doc
    got = d.ok("POST", "/v1/hold", {"hold": "y", "paths": ["/etc/passwd"]})
    assert got["refused"][0]["code"] == "not_allowed"
