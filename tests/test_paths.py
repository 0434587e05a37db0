"""Paths: resolved in the caller's process, refused relative by the daemon, checked by what was opened.

A relative path once reached the daemon as it was and was looked up in the daemon's working folder: a
caller in folder b loading m/w.safetensors received the tensors of a/m/w.safetensors. These tests hold
every way a path can name another file than the caller meant to that case's outcome: the right tensors or
a refusal, never another file's bytes.
"""

from __future__ import annotations

import os
import pathlib
import threading
import time

import pytest

from conftest import assert_same_tensors, make_model, reference


def _two_same_named(d):
    """a/m/w.safetensors and b/m/w.safetensors under the allowed folder, different tensors."""
    a = make_model(d.models / "a" / "m" / "w.safetensors", seed=1)
    b = make_model(d.models / "b" / "m" / "w.safetensors", seed=2)
    return a, b


def test_relative_path_is_the_callers_not_the_daemons(make_daemon, tmp_path):
    root = tmp_path / "d0"
    d = make_daemon(root=root, start=False)
    a, b = _two_same_named(d)
    d.cwd = d.models / "a"  # the daemon's working folder holds a file of the same relative name
    d.start()
    code, said, err = d.run_client(f"""
        os.chdir({str(d.models / 'b')!r})
        import pathlib
        from comfyui_hearth.client import load
        for given in ("m/w.safetensors", pathlib.Path("m/w.safetensors"), "./m/../m/w.safetensors"):
            r = load(given)
            want = safetensors.torch.load_file(str(given))
            say(cached=r.cached, same=same(r.tensors, want), path=r.path)
        sd = load_state_dict(pathlib.Path("m/w.safetensors"), device="cpu")
        say(state_dict_same=same(sd, safetensors.torch.load_file("m/w.safetensors")))
    """)
    assert code == 0, err
    for line in said[:3]:
        assert line["cached"], (line, err)  # served by the daemon, not a fallback
        assert line["same"], line  # b's tensors, not a's
        assert os.path.isabs(line["path"])
    assert said[3]["state_dict_same"]
    assert [s["path"] for s in d.status()["segments"]] == [str(b)]


@pytest.mark.parametrize("route, body", [
    ("/v1/acquire", {"path": "m/w.safetensors"}),
    ("/v1/preload", {"paths": ["m/w.safetensors"]}),
    ("/v1/pin", {"path": "m/w.safetensors", "pinned": True}),
    ("/v1/pin", {"path": "m/w.safetensors", "pinned": False}),
    ("/v1/evict", {"path": "m/w.safetensors"}),
    ("/v1/acquire", {"path": "~/m/w.safetensors"}),
])
def test_daemon_refuses_relative_paths(shared_daemon, route, body):
    d = shared_daemon
    status, doc = d.api("POST", route, body)
    if route == "/v1/preload":  # preload answers for each path: refused, with the reason
        assert status == 200 and not doc["queued"], doc
        err = doc["refused"][0]
    else:
        assert status == 400, doc
        err = doc["error"]
    assert err["code"] == "bad_request" and "absolute" in err["message"], err


def test_evict_by_segment_key(daemon):
    path = make_model(daemon.models / "k.safetensors")
    key = daemon.acquire(path)["key"]
    ans = daemon.ok("POST", "/v1/evict", {"key": key})
    assert [e["key"] for e in ans["evicted"]] == [key]
    assert daemon.status()["segments"] == []


def test_directory_swapped_for_a_symlink_never_serves_the_file_outside(make_daemon, tmp_path):
    """A folder inside the allowed root is swapped, again and again, for a symlink to a folder outside it
    holding a file of the same name. Resolution and opening race the swap; every answer must be the inside
    file's bytes or a refusal."""
    d = make_daemon()
    inside = make_model(d.models / "dir" / "w.safetensors", seed=3)
    outside = make_model(tmp_path / "outside" / "w.safetensors", seed=4)
    want_inside = inside.read_bytes()
    outside_bytes = outside.read_bytes()
    assert want_inside != outside_bytes
    parked = d.models / "dir.parked"
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            os.rename(d.models / "dir", parked)
            os.symlink(outside.parent, d.models / "dir")
            time.sleep(0.001)
            os.unlink(d.models / "dir")
            os.rename(parked, d.models / "dir")
            time.sleep(0.001)

    t = threading.Thread(target=swap)
    t.start()
    served, refused = 0, 0
    try:
        for _ in range(400):
            status, doc = d.api("POST", "/v1/acquire", {"path": str(inside)})
            if status != 200:
                assert doc["error"]["code"] in ("not_allowed", "not_found", "source_changed"), doc
                refused += 1
                continue
            # The daemon's sweep may drop the segment meanwhile (its path resolves outside at that moment):
            # then its name is gone and the release finds no entry. Neither is a wrong answer.
            try:
                seg = (d.shm / os.path.basename(doc["segment"])).read_bytes()
            except FileNotFoundError:
                seg = None
            if seg is not None:
                assert seg != outside_bytes, "the daemon served a file outside the allowed folders"
                assert seg == want_inside
                served += 1
            status, doc = d.api("POST", "/v1/release", {"key": doc["key"]})
            assert status == 200 or doc["error"]["code"] == "not_found", (status, doc)
    finally:
        stop.set()
        t.join()
    assert served > 0, "the swap never let a request through: the test shows nothing"


def test_file_renamed_over_after_resolution_is_never_served_as_the_old_one(in_process):
    """A preload queued behind a slow fill keeps only the identity it resolved; a file renamed over its
    path meanwhile is refused by the fill (the inode opened is not that identity) and the next acquire
    gets the new file's tensors."""
    d = in_process
    from comfyui_hearth.client import load

    path = make_model(d.models / "r.safetensors", seed=5)
    first = load(str(path))
    assert first.cached
    new = make_model(d.models / "r.new.safetensors", seed=6)
    os.replace(new, path)
    again = load(pathlib.Path(path))
    assert again.cached and not again.hit
    assert_same_tensors(again.tensors, reference(path))
