"""Every door of SECURITY.md, tried against a real daemon: Origin (with a real browser on another origin),
names and segments planted in the tmpfs by another user, the modes of every file Hearth makes.

Doors tried elsewhere and not repeated here: the token missing, wrong or in the query
(test_daemon_api.test_every_route_but_health_needs_the_token, test_token_in_query_only_counts_for_the_websocket,
test_websocket_needs_the_token_and_streams_events), the Host header (test_wrong_host_is_refused), the body
size (test_body_over_1mb_is_refused), a token file others can read (test_token_readable_by_others_refuses_to_start),
loopback-only listening (test_start_announces_itself_with_private_state), symlink and rename races
(test_paths.test_directory_swapped_for_a_symlink_never_serves_the_file_outside,
test_file_renamed_over_after_resolution_is_never_served_as_the_old_one), paths out of the allowed folders
(test_daemon_api.test_only_model_files_under_allowed_roots), a segment chowned to another user after its fill
(test_store.test_client_refuses_a_segment_owned_by_another_user) and at restart
(test_store.test_restart_leaves_other_users_files_alone), and the pack's /hearth/ routes in ComfyUI
(tests/comfy/test_panel_routes.py).
"""

from __future__ import annotations

import asyncio
import http.server
import os
import re
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import aiohttp
import pytest

from conftest import make_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _refused(answer, status: int, code: str) -> str:
    got, doc = answer
    assert got == status and doc["error"]["code"] == code, answer
    return doc["error"]["message"]


# ---- Origin -----------------------------------------------------------------------------------------

def _with_origin(d, method: str, path: str, origin: str, body=None, token="default"):
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    headers = {"Origin": origin, "Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {d.token if token == 'default' else token}"
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


FOREIGN = ["http://evil.example", "http://127.0.0.1:1", "https://127.0.0.1:{port}", "http://localhost:{port}",
           "http://[::1]:{port}", "null", "http://127.0.0.1:{port}.evil.example", "file://", ""]


@pytest.mark.parametrize("origin", FOREIGN)
def test_a_page_of_another_origin_can_neither_use_nor_read_the_daemon(shared_daemon, origin):
    """With the right token and Host, a request carrying another origin is refused: the API, the public
    health route and the panel alike (Host 127.0.0.1: a page at localhost:PORT is another origin too)."""
    d = shared_daemon
    origin = origin.format(port=d.port)
    for method, path, body in [("GET", "/v1/status", None), ("POST", "/v1/evict", {"all": True}),
                               ("GET", "/v1/health", None), ("GET", "/", None), ("OPTIONS", "/v1/status", None)]:
        msg = _refused(_with_origin(d, method, path, origin, body), 403, "not_allowed")
        assert "its own panel" in msg, msg


def test_the_daemons_own_origin_is_served(shared_daemon):
    d = shared_daemon
    own = f"http://127.0.0.1:{d.port}"
    assert _with_origin(d, "GET", "/v1/status", own)[0] == 200
    assert _with_origin(d, "POST", "/v1/config", own.upper(), {})[0] == 200  # scheme and host are caseless
    # the own origin does not stand in for the token
    _refused(_with_origin(d, "GET", "/v1/status", own, token=None), 401, "unauthorized")


def test_websocket_of_another_origin_is_refused_even_with_the_token(shared_daemon):
    """Websockets are not held to CORS: a page that learnt the token could otherwise watch every load."""
    d = shared_daemon
    url = f"http://127.0.0.1:{d.port}/v1/events?token={d.token}"

    async def run():
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await s.ws_connect(url, headers={"Origin": "http://evil.example"})
            assert info.value.status == 403
            ws = await s.ws_connect(url, headers={"Origin": f"http://127.0.0.1:{d.port}"})
            assert (await ws.receive_json(timeout=5))["type"] == "status"
            await ws.close()

    asyncio.run(run())


ATTACK_PAGE = """<!doctype html><html><body><pre id="out">running</pre><script>
const out = [];
const done = () => { document.getElementById("out").textContent = "RESULT " + out.join(" "); };
const ws = new WebSocket("ws://127.0.0.1:%(port)d/v1/events?token=%(token)s");
ws.onmessage = () => { out.push("ws:read"); ws.close(); };
ws.onerror = () => out.push("ws:refused");
ws.onclose = () => {
  fetch("http://127.0.0.1:%(port)d/v1/evict", {method: "POST", mode: "no-cors",
        headers: {"Content-Type": "text/plain"}, body: JSON.stringify({all: true})})
    .then(() => out.push("post:sent"), () => out.push("post:failed"))
    .then(() => fetch("http://127.0.0.1:%(port)d/v1/health"))
    .then(r => r.text().then(t => out.push("health:read")), () => out.push("health:unreadable"))
    .then(done);
};
</script></body></html>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")
def test_a_real_browser_page_on_another_origin_gets_nothing(daemon, tmp_path):
    """A page served from another port of this machine, which even knows the token, opens the events
    websocket, posts an evict all (a simple request: no preflight) and reads the health route, in headless
    Chromium. The websocket is refused, the daemon evicts nothing, the health answer stays unreadable."""
    from test_panel import render

    d = daemon
    model = make_model(d.models / "kept.safetensors")
    d.acquire(model)
    page = ATTACK_PAGE % {"port": d.port, "token": d.token}

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # the stdlib's name
            body = page.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dom = render(f"http://127.0.0.1:{server.server_address[1]}/", tmp_path / "profile", budget_ms=5000)
    finally:
        server.shutdown()
    result = re.search(r'<pre id="out">RESULT ([^<]*)</pre>', dom)
    assert result, dom[-2000:]
    said = result.group(1).split()
    assert "ws:refused" in said and "ws:read" not in said, said
    assert "health:unreadable" in said, said
    assert [s["path"] for s in d.status()["segments"]] == [str(model)]  # the evict all did nothing
    assert d.status()["stats"]["evictions"] == 0


# ---- names and segments planted in a shared tmpfs by another user ------------------------------------

PLANTER = 65533  # the other user, owner of what is planted
FOLDER_OWNER = 65532  # /dev/shm belongs to root; here neither to the daemon's user nor to the planter
CAP_FOWNER, PR_CAPBSET_DROP = 3, 24


def _without_cap_fowner() -> None:
    """(In the child, before exec.) Root without CAP_FOWNER is held to the sticky bit like any user."""
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(PR_CAPBSET_DROP, CAP_FOWNER, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_FOWNER)")


def _start_bound_by_the_sticky_bit(d, timeout: float = 20.0) -> None:
    """Start `d` (a conftest Daemon) as Daemon.start does, but without CAP_FOWNER (see the fixture)."""
    import json
    import time

    from conftest import PY

    d.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = d.home / "daemon.json"
    log = open(d.home / "test-daemon.log", "ab")
    try:
        d.proc = subprocess.Popen([PY, "-m", "comfyui_hearth.cli", "daemon", "--headless"], env=d.env,
                                  preexec_fn=_without_cap_fowner, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=log)
    except OSError as e:
        pytest.skip(f"cannot drop CAP_FOWNER for the daemon: {e}")
    finally:
        log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            doc = json.loads(info.read_text())
            if doc.get("pid") == d.proc.pid:
                d.port = doc["port"]
                caps = next(line for line in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines()
                            if line.startswith("CapEff:"))
                assert not int(caps.split()[1], 16) & (1 << CAP_FOWNER), caps
                return
        except (FileNotFoundError, ValueError):
            pass
        assert d.proc.poll() is None, d.log()
        time.sleep(0.02)
    raise AssertionError(f"daemon did not start:\n{d.log()}")


@pytest.fixture
def shared_tmpfs_daemon(make_daemon):
    """A daemon over a sticky, world-writable tmpfs folder owned by someone else: /dev/shm as users share
    it. The tests run as root, which the sticky bit does not stop; the daemon runs without CAP_FOWNER, so
    the kernel holds it to the sticky bit as it holds any user (the interpreter lives under /root, which
    another uid could not even execute)."""
    d = make_daemon(start=False)
    os.chown(d.shm, FOLDER_OWNER, FOLDER_OWNER)
    os.chmod(d.shm, 0o1777)  # noqa: S103 - the shared, sticky folder this test is about
    return d


def test_names_planted_in_a_shared_tmpfs_by_another_user(shared_tmpfs_daemon):
    """Another user plants, under the names the daemon will use: A's segment (a valid file of other
    tensors), C's segment (a symlink to a file of theirs) and D's .part (as this daemon would name it).
    No load gets the planted tensors: A and C load the stock way with a clear reason, D and E are cached.
    The daemon answers every acquire with a typed error or the file's own bytes, touches none of the planted
    files, and starts again beside them."""
    from comfyui_hearth.daemon.segments import SourceId

    d = shared_tmpfs_daemon
    a, c, dd, e = (make_model(d.models / f"{n}.safetensors", seed=i) for i, n in enumerate("acde"))
    theirs = make_model(d.root / "theirs.safetensors", seed=99)
    os.chown(theirs, PLANTER, PLANTER)
    _start_bound_by_the_sticky_bit(d)
    key = {p: SourceId.of(os.path.realpath(p)).key for p in (a, c, dd)}
    planted = {d.shm / d.seg_name(key[a]): theirs.read_bytes(),
               d.shm / f".{d.prefix}{key[dd]}.{d.proc.pid}.part": b"planted"}
    for path, data in planted.items():
        path.write_bytes(data)
        os.chown(path, PLANTER, PLANTER)
    link = d.shm / d.seg_name(key[c])
    os.symlink(theirs, link)
    os.lchown(link, PLANTER, PLANTER)

    for p in (a, c, dd, e):
        status, doc = d.api("POST", "/v1/acquire", {"path": str(p)})
        assert status != 500 and doc.get("error", {}).get("code") != "internal", (p.name, status, doc)
        if status == 200:
            assert Path(doc["segment"]).read_bytes() == p.read_bytes(), p.name
    rc, said, err = d.run_client(f"""
    for path in {[str(a), str(c), str(dd), str(e)]!r}:
        r = load(path)
        say(name=os.path.basename(path), cached=r.cached, reason=r.reason,
            same=same(r.tensors, safetensors.torch.load_file(path)))
    """)
    assert rc == 0, err
    got = {s["name"]: s for s in said}
    assert all(s["same"] for s in said), said
    assert not got["a.safetensors"]["cached"] and not got["c.safetensors"]["cached"], said
    assert "another user" in got["a.safetensors"]["reason"], said
    assert got["d.safetensors"]["cached"] and got["e.safetensors"]["cached"], said

    d.stop()
    _start_bound_by_the_sticky_bit(d)  # beside files it may neither adopt nor remove
    assert sorted(s["path"] for s in d.status()["segments"]) == [str(dd), str(e)]
    for path, data in planted.items():
        assert path.read_bytes() == data and path.stat().st_uid == PLANTER, path.name
    assert os.readlink(link) == str(theirs)
    parts = [n for n in os.listdir(d.shm) if n.endswith(".part")]
    assert parts == [p.name for p in planted if p.name.endswith(".part")], parts  # the planted one only


# ---- a port another user holds ------------------------------------------------------------------------

SYSTEM_PYTHON = "/usr/bin/python3"  # the tests' interpreter lives under /root, which nobody can execute
NOBODY = 65534
SQUATTER = """
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
s.settimeout(20)
try:
    c, _ = s.accept()
except OSError:
    print("nothing", flush=True)
    sys.exit()
c.settimeout(5)
got = c.recv(65536)
print(repr(got), flush=True)
c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: 28\\r\\n\\r\\n'
          b'{"ok": true, "protocol": 99}')
"""


@pytest.mark.skipif(not os.access(SYSTEM_PYTHON, os.X_OK), reason=f"no {SYSTEM_PYTHON} for another user to run")
def test_a_port_another_user_listens_on_never_gets_the_token(tmp_path, in_process_env):
    """daemon.json names a port that a process of another user now listens on (the daemon died, its pid
    was reused or is theirs): the client sends it nothing, no token, and loads the stock way, saying why."""
    import json

    from conftest import Daemon, assert_same_tensors, reference

    d = Daemon(tmp_path)  # never started: its environment and folders only
    squatter = subprocess.Popen([SYSTEM_PYTHON, "-c", SQUATTER], user=NOBODY, group=NOBODY, extra_groups=[],
                                stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        port = int(squatter.stdout.readline())
        d.home.mkdir(mode=0o700)
        (d.home / "token").write_text("t" * 43)
        (d.home / "token").chmod(0o600)
        (d.home / "daemon.json").write_text(json.dumps({"pid": squatter.pid, "port": port, "protocol": 1}))
        path = make_model(d.models / "m.safetensors")
        with in_process_env(d):
            from comfyui_hearth.client import load

            r = load(str(path))
        assert not r.cached and "another user" in r.reason, r.reason
        assert_same_tensors(r.tensors, reference(path))
    finally:
        squatter.kill()
        out, _ = squatter.communicate(timeout=10)
        d.cleanup()
    assert "Bearer" not in out and "t" * 43 not in out, out


# ---- file modes -------------------------------------------------------------------------------------

def test_file_modes(tmp_path):
    """Started the pack's way (client.spawn, as ComfyUI's autostart and the CLI do) under umask 000: the
    state folder is 0700 and every file in it 0600, segments 0600, whatever the umask."""
    from harness.daemon import Daemon as PackDaemon

    models = tmp_path / "models"
    path = make_model(models / "m.safetensors")
    shm = Path("/dev/shm") / f"pytest-hearth-modes-{os.getpid()}"
    d = PackDaemon(tmp_path / "home", [models], shm_dir=shm)
    old = os.umask(0)
    try:
        d.start()
    finally:
        os.umask(old)
    try:
        d.api("POST", "/v1/acquire", {"path": str(path)})
        d.api("POST", "/v1/config", {"budget": "1G"})
        d.api("POST", "/v1/pin", {"path": str(path)})
        home = tmp_path / "home"
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in home.iterdir()}
        assert {"token", "daemon.json", "index.json", "config.json", "daemon.log"} <= set(modes), modes
        assert all(m == 0o600 for m in modes.values()), {k: oct(m) for k, m in modes.items()}
        segments = list(shm.iterdir())
        assert segments and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in segments)
    finally:
        d.stop()
        shutil.rmtree(shm, ignore_errors=True)
