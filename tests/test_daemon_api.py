"""The daemon's HTTP face and start-up: token, Host, body size, websocket, allowed files, hostile headers,
hostile request bodies, the token file's mode, one daemon per user."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time

import aiohttp
import pytest

from conftest import make_model
from hostile import CASES, GOOD

ROUTES = [("GET", "/v1/status"), ("POST", "/v1/acquire"), ("POST", "/v1/release"), ("POST", "/v1/preload"),
          ("POST", "/v1/evict"), ("POST", "/v1/pin"), ("GET", "/v1/config"), ("POST", "/v1/config"),
          ("GET", "/v1/strategy"), ("POST", "/v1/strategy"), ("GET", "/v1/roots"), ("POST", "/v1/roots")]


def _refused(status_doc, status: int, code: str) -> str:
    got_status, doc = status_doc
    assert got_status == status, status_doc
    assert set(doc) == {"error"} and doc["error"]["code"] == code, doc
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    return doc["error"]["message"]


# ---- start-up ---------------------------------------------------------------------------------------

def test_start_announces_itself_with_private_state(daemon):
    d = daemon
    info = json.loads((d.home / "daemon.json").read_text())
    assert info["pid"] == d.proc.pid and info["port"] == d.port and info["protocol"] >= 1 and info["version"]
    assert stat.S_IMODE(d.home.stat().st_mode) == 0o700
    assert stat.S_IMODE((d.home / "token").stat().st_mode) == 0o600
    assert len(d.token) >= 32
    health = d.api("GET", "/v1/health", token=None)
    assert health[0] == 200 and health[1]["ok"] and health[1]["protocol"] == info["protocol"]
    # loopback only
    import psutil

    listening = [c.laddr for c in psutil.Process(d.proc.pid).net_connections() if c.status == "LISTEN"]
    assert listening and all(a.ip == "127.0.0.1" for a in listening), listening


def test_token_readable_by_others_refuses_to_start(make_daemon):
    d = make_daemon(start=False)
    d.home.mkdir(mode=0o700, parents=True)
    token = d.home / "token"
    token.write_text("x" * 43)
    token.chmod(0o644)
    r = d.cli("daemon", "--headless", timeout=30)
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "readable by others" in lines[0] and "chmod 600" in lines[0], r.stderr
    assert not (d.home / "daemon.json").exists()


def test_second_daemon_exits_0_saying_one_runs(daemon):
    d = daemon
    t0 = time.monotonic()
    r = d.cli("daemon", "--headless", timeout=30)
    assert r.returncode == 0, r.stderr
    assert "already running" in r.stderr and str(d.proc.pid) in r.stderr
    assert time.monotonic() - t0 < 10
    assert d.proc.poll() is None
    assert json.loads((d.home / "daemon.json").read_text())["pid"] == d.proc.pid
    assert d.api("GET", "/v1/status")[0] == 200


def test_sigterm_stops_cleanly_and_withdraws_the_announcement(daemon):
    assert daemon.stop() == 0
    assert not (daemon.home / "daemon.json").exists()


# ---- authentication, Host, body size ----------------------------------------------------------------

@pytest.mark.parametrize("method,path", ROUTES)
def test_every_route_but_health_needs_the_token(shared_daemon, method, path):
    daemon = shared_daemon
    body = {} if method == "POST" else None
    _refused(daemon.api(method, path, body, token=None), 401, "unauthorized")
    _refused(daemon.api(method, path, body, token="not-the-token"), 401, "unauthorized")
    _refused(daemon.api(method, path, body, token=daemon.token + "x"), 401, "unauthorized")
    assert daemon.api(method, path, body)[0] != 401


def test_token_in_query_only_counts_for_the_websocket(shared_daemon):
    daemon = shared_daemon
    _refused(daemon.api("GET", f"/v1/status?token={daemon.token}", token=None), 401, "unauthorized")


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1", "127.0.0.1",
                                  "localhost.evil.example:{port}", "192.168.1.1:{port}"])
def test_wrong_host_is_refused(shared_daemon, host):
    daemon = shared_daemon
    host = host.format(port=daemon.port)
    msg = _refused(daemon.api("GET", "/v1/status", host=host), 401, "unauthorized")
    assert "loopback" in msg
    _refused(daemon.api("GET", "/v1/health", host=host, token=None), 401, "unauthorized")


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}"])
def test_loopback_host_is_accepted(shared_daemon, host):
    daemon = shared_daemon
    assert daemon.api("GET", "/v1/status", host=host.format(port=daemon.port))[0] == 200


def test_body_over_1mb_is_refused(shared_daemon):
    d = shared_daemon
    big = json.dumps({"path": "x" * (1 << 20)}).encode()
    status, doc = d.api("POST", "/v1/acquire", raw_body=big)
    assert status == 413, (status, doc)
    assert doc["error"]["code"] == "bad_request" and "1048576" in doc["error"]["message"]
    just_under = json.dumps({"roots": ["x" * ((1 << 20) - 100)]}).encode()
    assert len(just_under) < 1 << 20
    assert d.api("POST", "/v1/roots", raw_body=just_under)[0] == 200
    assert d.api("GET", "/v1/health")[0] == 200


def test_websocket_needs_the_token_and_streams_events(daemon):
    d = daemon
    path = make_model(d.models / "ws.safetensors")

    async def run():
        async with aiohttp.ClientSession() as s:
            for url in (f"http://127.0.0.1:{d.port}/v1/events",
                        f"http://127.0.0.1:{d.port}/v1/events?token=wrong"):
                with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                    await s.ws_connect(url)
                assert info.value.status == 401
            # a header token does not open the websocket either: browsers cannot send one there
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await s.ws_connect(f"http://127.0.0.1:{d.port}/v1/events",
                                   headers={"Authorization": f"Bearer {d.token}"})
            ws = await s.ws_connect(f"http://127.0.0.1:{d.port}/v1/events?token={d.token}")
            first = await ws.receive_json(timeout=5)
            assert first["type"] == "status" and "segments" in first
            await asyncio.to_thread(d.acquire, path)
            seen = []
            while not any(e.get("action") == "acquire" for e in seen):
                seen.append(await ws.receive_json(timeout=5))
            await ws.close()
            return seen

    events = asyncio.run(run())
    actions = [e.get("action") for e in events if e["type"] == "cache"]
    assert actions[:3] == ["filling", "ready", "acquire"], events
    assert all(e["path"] == str(path) for e in events if e["type"] == "cache")


# ---- allowed files ----------------------------------------------------------------------------------

def test_only_model_files_under_allowed_roots(daemon, tmp_path):
    d = daemon
    outside = make_model(tmp_path / "outside" / "secret.safetensors")
    (d.models / "sub").mkdir()
    cases = {
        "outside": str(outside),
        "dotdot": str(d.models / "sub" / ".." / ".." / ".." / "outside" / "secret.safetensors"),
        "symlink_out": d.models / "link.safetensors",
        "symlink_dir_out": d.models / "linkdir",
        "prefix_sibling": None,
    }
    os.symlink(outside, cases["symlink_out"])
    os.symlink(outside.parent, cases["symlink_dir_out"])
    cases["symlink_dir_out"] = str(cases["symlink_dir_out"] / "secret.safetensors")
    sibling = make_model(d.models.parent / (d.models.name + "-evil") / "m.safetensors")  # /x/models-evil
    cases["prefix_sibling"] = str(sibling)
    for name, path in cases.items():
        msg = _refused(d.api("POST", "/v1/acquire", {"path": str(path)}), 403, "not_allowed")
        assert "outside the allowed model folders" in msg, (name, msg)
    # not a model file, even inside a root
    (d.models / "notes.txt").write_text("hi")
    (d.models / "dir.safetensors").mkdir()
    (d.models / "old.ckpt").write_bytes(b"x")
    os.symlink("/etc/hostname", d.models / "host.safetensors")
    for p in ("notes.txt", "dir.safetensors", "old.ckpt", "host.safetensors"):
        _refused(d.api("POST", "/v1/acquire", {"path": str(d.models / p)}), 403, "not_allowed")
    _refused(d.api("POST", "/v1/acquire", {"path": str(d.models / "missing.safetensors")}), 404, "not_found")
    # a symlink inside the root to a model inside the root is fine (resolved to its real path)
    inside = make_model(d.models / "real.safetensors")
    os.symlink(inside, d.models / "alias.safetensors")
    ans = d.acquire(d.models / "alias.safetensors")
    assert d.status()["segments"][0]["path"] == str(inside) and ans["key"] == d.acquire(inside)["key"]
    assert d.final_names() == [d.seg_name(ans["key"])]


def test_roots_registered_by_a_process_are_allowed(daemon, tmp_path):
    d = daemon
    other = make_model(tmp_path / "comfy" / "models" / "m.safetensors")
    _refused(d.api("POST", "/v1/acquire", {"path": str(other)}), 403, "not_allowed")
    # names no folder can have (a NUL byte, a lone surrogate) are skipped like folders that do not exist
    given = [str(other.parent), str(tmp_path / "no-such-dir"), "/a\0b", "/a\ud800b"]
    roots = d.ok("POST", "/v1/roots", {"roots": given})["roots"]
    assert str(other.parent) in roots and not set(given[1:]) & set(roots)
    assert d.acquire(other)["size"] == other.stat().st_size


@pytest.mark.parametrize("body,status,code", [
    ({}, 400, "bad_request"),
    ({"path": ""}, 400, "bad_request"),
    ({"path": 123}, 400, "bad_request"),
    ({"path": ["a"]}, 400, "bad_request"),
    ({"path": {"a": 1}}, 400, "bad_request"),
    ({"path": "/tmp/a\u0000b.safetensors"}, 400, "bad_request"),
])
def test_hostile_acquire_bodies(shared_daemon, body, status, code):
    daemon = shared_daemon
    _refused(daemon.api("POST", "/v1/acquire", body), status, code)
    assert daemon.api("GET", "/v1/health")[0] == 200


@pytest.mark.parametrize("method,path,raw", [
    ("POST", "/v1/acquire", b"{not json"),
    ("POST", "/v1/acquire", b"[1, 2]"),
    ("POST", "/v1/acquire", b"\xff\xfe"),
    ("POST", "/v1/config", b"[]"),
    ("POST", "/v1/config", b'{"no_such_setting": 1}'),
    ("POST", "/v1/config", b'{"budget": "lots"}'),
    ("POST", "/v1/config", b'{"max_fills": 0}'),
    ("POST", "/v1/config", b'{"max_fills": "many"}'),
    ("POST", "/v1/config", b'{"model_dirs": 5}'),
    ("POST", "/v1/roots", b'{"roots": "/"}'),
    ("POST", "/v1/preload", b'{"paths": 5}'),
    ("POST", "/v1/strategy", b'["x"]'),
    ("POST", "/v1/evict", b"{}"),
    # found by the fuzzer (bench/fuzz.py): each was a 500 internal error
    ("POST", "/v1/acquire", b'{"path": "/m/\\ud800.safetensors"}'),  # a lone surrogate no file name holds
    ("POST", "/v1/evict", b'{"path": "/m/\\udc00.safetensors"}'),
    ("POST", "/v1/pin", b'{"path": "/m/\\ud800.safetensors", "pinned": false}'),
    ("POST", "/v1/config", b'{"max_fills": 1e999}'),  # an infinite float, which int() cannot take
    ("POST", "/v1/config", b'{"max_fills": Infinity}'),  # not JSON, though Python's parser takes it
    ("POST", "/v1/acquire", b"[" * 100_000 + b"]" * 100_000),  # deeper than the parser's recursion limit
    ("POST", "/v1/evict", b'{"key": []}'),  # unhashable, for the warm set's memory of evicted keys
])
def test_hostile_request_bodies(shared_daemon, method, path, raw):
    daemon = shared_daemon
    before = daemon.ok("GET", "/v1/config")
    _refused(daemon.api(method, path, raw_body=raw), 400, "bad_request")
    assert daemon.ok("GET", "/v1/config") == before  # nothing half-applied


@pytest.mark.parametrize("headers, status, code", [
    ({"Content-Encoding": "gzip"}, 400, "bad_request"),  # a body that is not gzip: was a 500
    ({"Content-Type": "application/json; charset=no-such-codec"}, 200, None),  # was a 500 (LookupError)
    ({"Content-Type": "application/json; charset=latin-1"}, 200, None),  # JSON is UTF-8, whatever it says
])
def test_bodies_are_read_as_utf8_json_whatever_the_headers_say(shared_daemon, headers, status, code):
    import http.client

    d = shared_daemon
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    try:
        conn.request("POST", "/v1/strategy", body='{"model": "café"}'.encode(),
                     headers={"Authorization": f"Bearer {d.token}", "Content-Type": "application/json", **headers})
        resp = conn.getresponse()
        answer = (resp.status, json.loads(resp.read()))
    finally:
        conn.close()
    if code:
        _refused(answer, status, code)
    else:
        assert answer[0] == 200 and answer[1]["model"] == "café", answer


def test_not_found_answers(shared_daemon):
    d = shared_daemon
    _refused(d.api("POST", "/v1/evict", {"path": str(d.models / "x.safetensors")}), 404, "not_found")
    _refused(d.api("POST", "/v1/release", {"key": "0123456789abcdef"}), 404, "not_found")
    _refused(d.api("POST", "/v1/pin", {"path": str(d.models / "x.safetensors")}), 404, "not_found")
    _refused(d.api("GET", "/v1/no-such-route"), 404, "not_found")


# ---- hostile headers through the daemon --------------------------------------------------------------

def test_hostile_headers_refused_and_daemon_keeps_serving(daemon):
    d = daemon
    good = d.models / "good.safetensors"
    good.write_bytes(GOOD)
    for cid, data, words, _ in CASES:
        path = d.models / f"{cid}.safetensors"
        path.write_bytes(data)
        status, doc = d.api("POST", "/v1/acquire", {"path": str(path)})
        assert status == 422 and doc.get("error", {}).get("code") == "bad_header", (cid, status, doc)
        msg = doc["error"]["message"]
        assert str(path) in msg and all(w in msg for w in words), (cid, msg)
        assert d.shm_names() == [], (cid, d.shm_names())  # no segment and no .part left behind
    assert d.status()["segments"] == [] and d.status()["stats"]["fills"] == 0
    assert d.acquire(good)["size"] == len(GOOD)
    assert d.status()["stats"]["fills"] == 1


def test_status_document(daemon):
    d = daemon
    p = make_model(d.models / "s.safetensors")
    d.acquire(p)
    st = d.status()
    for k in ("version", "protocol", "pid", "budget", "used", "stats", "segments", "roots", "shm", "ram"):
        assert k in st, k
    (seg,) = st["segments"]
    for k in ("path", "size", "state", "hits", "last_use", "pinned", "holders", "key"):
        assert k in seg, k
    assert seg["path"] == str(p) and seg["size"] == p.stat().st_size and seg["state"] == "ready"
    assert st["used"] == seg["size"] and st["roots"] == [str(d.models)]
    index = json.loads((d.home / "index.json").read_text())
    assert list(index) == [seg["key"]] and index[seg["key"]]["source"]["path"] == str(p)
    assert stat.S_IMODE((d.home / "index.json").stat().st_mode) == 0o600


def test_strategy_round_trip(daemon):
    d = daemon
    assert d.ok("GET", "/v1/strategy") == {}
    d.ok("POST", "/v1/strategy", {"strategy": "cpu", "model": "m"})
    got = d.ok("GET", "/v1/strategy")
    assert got["strategy"] == "cpu" and "reported" in got
    assert d.status()["strategy"]["strategy"] == "cpu"


def test_bad_budget_in_environment_refuses_to_start_clearly(make_daemon):
    d = make_daemon(env={"HEARTH_BUDGET": "lots"}, start=False)
    r = d.cli("daemon", "--headless", timeout=30)
    assert r.returncode == 1, (r.returncode, r.stderr)
    line = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(line) == 1 and "HEARTH_BUDGET" in line[0] and "not a size" in line[0], r.stderr
