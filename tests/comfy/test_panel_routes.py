"""The panel's side of ComfyUI: /hearth/ routes, the daemon's events relayed to browsers, the served JS.

One ComfyUI of its own (its HEARTH_HOME is this module's), and a daemon that the tests stop and start: the
routes must answer with the daemon down, pick it up when it comes back, and relay its events throughout.
The daemon allows no model folder of its own: preloading by name works only because the routes register
ComfyUI's folders, as the nodes do. The pack is installed twice in that ComfyUI (two folders of custom_nodes/,
two module names): its routes and its relay must still be there once.

The browser's doors: requests are sent as a browser would send them for a page of another origin (Origin,
Sec-Fetch-Site, a text/plain or form body), to a Host of the LAN (ComfyUI's own Origin check covers only a
loopback Host, so there the refusal must be Hearth's) and to the loopback one.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import shutil
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from harness import REPO
from harness.checkout import find_comfyui
from harness.daemon import Daemon
from harness.server import PACK_NAME, ComfyServer, write_extra_model_paths

CKPT, LORA = "panel-ckpt.safetensors", "panel-lora.safetensors"
TWIN = "comfyui-hearth-twin"  # a second folder of the pack, as a user with a clone and a registry copy has
LAN_IP = "192.0.2.10"  # TEST-NET-1: the Host a machine of the LAN, or the user's own browser there, addresses
EVIL = "http://evil.example"


class Events:
    """ComfyUI's websocket, read in a thread: the `hearth.cache` messages it forwards."""

    def __init__(self, port: int):
        self.port, self.messages, self._stop = port, [], threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "could not open ComfyUI's websocket"

    async def _run(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"ws://127.0.0.1:{self.port}/ws?clientId={uuid.uuid4().hex}") as ws:
                self._ready.set()
                while not self._stop.is_set():
                    try:
                        msg = await ws.receive(timeout=0.2)
                    except asyncio.TimeoutError:
                        continue
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        doc = json.loads(msg.data)
                        if doc.get("type") == "hearth.cache":
                            self.messages.append(doc["data"])
                    elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        return

    def wait(self, pred, timeout: float = 30.0, what: str = "an event") -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for m in self.messages[seen:]:
                seen += 1
                if pred(m):
                    return m
            time.sleep(0.05)
        raise AssertionError(f"no {what} among {self.messages[-10:]}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names in lower case
    raw: bytes

    @property
    def doc(self) -> dict:
        return json.loads(self.raw) if self.raw else {}  # ComfyUI's own refusals have no body


class Panel:
    """The module's ComfyUI, its daemon (started and stopped by the tests) and the model files."""

    def __init__(self, server: ComfyServer, daemon: Daemon, models: Path):
        self.server, self.daemon, self.models = server, daemon, models

    def up(self) -> Daemon:
        if self.daemon.proc is None or self.daemon.proc.poll() is not None:
            self.daemon.start()
        return self.daemon

    def down(self) -> None:
        self.daemon.stop()

    def get(self, path: str) -> tuple[int, dict]:
        return self.call("GET", path)

    def call(self, method: str, path: str, body: dict | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict]:
        reply = self.request(method, path, body, headers)
        return reply.status, reply.doc

    def request(self, method: str, path: str, body: dict | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        """`body` as JSON, sent as application/json unless `headers` say otherwise (and give Host, Origin...)."""
        data = None if body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json"} if data is not None else {}
        sent.update(headers or {})
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        try:
            conn.request(method, path, data, sent)  # a Host among `headers` replaces http.client's
            r = conn.getresponse()
            return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    def lan_host(self) -> str:
        return f"{LAN_IP}:{self.server.port}"

    def segment(self, name: str) -> dict | None:
        status, doc = self.get("/hearth/status")
        assert status == 200
        return next((s for s in doc.get("segments", []) if s.get("name") == name), None)

    def wait_relay(self, timeout: float = 30.0) -> None:
        """Until ComfyUI hears the daemon's events (asking for the status also cuts its backoff short)."""
        deadline = time.monotonic() + timeout
        while not self.get("/hearth/status")[1].get("relay"):
            assert time.monotonic() < deadline, "ComfyUI's relay never connected to the daemon's events"
            time.sleep(0.1)

    def wait_ready(self, name: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seg = self.segment(name)
            if seg and seg["state"] == "ready":
                return seg
            time.sleep(0.1)
        raise AssertionError(f"{name} never became ready")


@pytest.fixture(scope="module")
def panel(tmp_path_factory: pytest.TempPathFactory):
    checkout, why = find_comfyui()
    if checkout is None:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("panel")
    models = root / "models"
    gen = torch.Generator().manual_seed(0)
    for folder, name in (("checkpoints", CKPT), ("loras", LORA)):
        (models / folder).mkdir(parents=True)
        save_file({"w": torch.randn(256, 64, generator=gen), "b": torch.randn(64, generator=gen).half()},
                  str(models / folder / name))
    (models / "checkpoints" / "old.ckpt").write_bytes(b"not offered: pickles are not cached")
    shm = Path("/dev/shm") / f"hearth-panel-tests-{uuid.uuid4().hex[:8]}"
    nowhere = root / "no-model-dirs"
    nowhere.mkdir()
    daemon = Daemon(root / "home", [nowhere], shm_dir=shm)
    (root / "home").mkdir(mode=0o700)
    (root / "comfy" / "custom_nodes").mkdir(parents=True)
    (root / "comfy" / "custom_nodes" / TWIN).symlink_to(REPO, target_is_directory=True)
    server = ComfyServer.with_hearth(checkout, root / "comfy", write_extra_model_paths(root / "extra.yaml", models),
                                     daemon.home)
    try:
        server.start()
        yield Panel(server, daemon, models)
    finally:
        server.stop()
        daemon.stop()
        shutil.rmtree(shm, ignore_errors=True)


def test_extension_scripts_are_served(panel):
    listed = panel.server.get("/extensions")
    base = f"/extensions/{PACK_NAME}/"
    assert base + "hearth.js" in listed and base + "lib/panel.js" in listed
    for path in [p for p in listed if p.startswith(base)] + [base + "lib/panel.css"]:
        with urllib.request.urlopen(panel.server.url + path, timeout=10) as r:
            assert r.status == 200, path
            expect = "text/css" if path.endswith(".css") else "javascript"
            assert expect in r.headers["Content-Type"], (path, r.headers["Content-Type"])


def test_models_lists_the_cacheable_files_comfyui_knows(panel):
    status, doc = panel.get("/hearth/models")
    assert status == 200 and doc == {"checkpoints": [CKPT], "loras": [LORA]}


def test_status_says_when_the_daemon_is_down(panel):
    panel.down()
    status, doc = panel.get("/hearth/status")
    assert status == 200 and doc["daemon"] == "down" and "not running" in doc["reason"], doc
    status, doc = panel.call("POST", "/hearth/preload", {"folder": "checkpoints", "name": CKPT})
    assert status == 503 and doc["error"]["code"] == "daemon_unavailable", doc


def test_preload_by_name_fills_the_segment_and_events_reach_the_browser(panel):
    panel.up()
    events = Events(panel.server.port)
    try:
        panel.wait_relay()
        status, doc = panel.call("POST", "/hearth/preload", {"folder": "checkpoints", "name": CKPT})
        assert status == 200 and not doc["refused"], doc
        assert doc["queued"][0]["name"] == CKPT and "path" not in doc["queued"][0]
        seg = panel.wait_ready(CKPT)
        assert seg["folder"] == "checkpoints" and seg["size"] == (panel.models / "checkpoints" / CKPT).stat().st_size
        ready = events.wait(lambda m: m.get("action") == "ready" and m.get("name") == CKPT, what="a ready event")
        assert ready["folder"] == "checkpoints" and "path" not in ready
    finally:
        events.close()
    status, doc = panel.get("/hearth/status")
    assert doc["daemon"] == "up" and "roots" not in doc
    assert all("path" not in s for s in doc["segments"])


@pytest.mark.parametrize("body", [
    {"path": "PLACEHOLDER"},
    {"folder": "checkpoints", "name": "PLACEHOLDER"},
    {"folder": "checkpoints", "name": "../loras/" + LORA},
    {"folder": "embeddings", "name": CKPT},
    {"folder": "checkpoints", "name": "old.ckpt"},  # listed by ComfyUI, but a pickle is never cached
])
def test_raw_paths_and_unlisted_names_are_refused(panel, body):
    panel.up()
    raw = str(panel.models / "checkpoints" / CKPT)
    body = {k: (raw if v == "PLACEHOLDER" else v) for k, v in body.items()}
    for route in ("/hearth/preload", "/hearth/pin", "/hearth/evict"):
        status, doc = panel.call("POST", route, body)
        assert status in (400, 404), (route, body, status, doc)
        assert doc["error"]["code"] in ("bad_request", "not_found"), doc


def test_pin_and_evict_by_name(panel):
    panel.up()
    status, doc = panel.call("POST", "/hearth/pin", {"folder": "loras", "name": LORA, "pinned": True})
    assert status == 200 and doc["pinned"] is True and doc["name"] == LORA, doc
    assert panel.wait_ready(LORA)["pinned"] is True
    status, doc = panel.call("POST", "/hearth/pin", {"folder": "loras", "name": LORA, "pinned": False})
    assert status == 200 and panel.segment(LORA)["pinned"] is False
    status, doc = panel.call("POST", "/hearth/evict", {"folder": "loras", "name": LORA})
    assert status == 200 and [e["name"] for e in doc["evicted"]] == [LORA], doc
    assert panel.segment(LORA) is None
    assert panel.call("POST", "/hearth/preload", {"folder": "checkpoints", "name": CKPT})[0] == 200
    seg = panel.wait_ready(CKPT)
    status, doc = panel.call("POST", "/hearth/evict", {"key": seg["key"]})
    assert status == 200 and doc["evicted"][0]["key"] == seg["key"]
    assert panel.call("POST", "/hearth/evict", {"key": "/etc/passwd"})[0] == 400
    status, doc = panel.call("POST", "/hearth/evict", {"all": True})
    assert status == 200 and panel.get("/hearth/status")[1]["segments"] == []


def test_relay_tells_the_browser_when_the_daemon_goes_and_comes_back(panel):
    panel.up()
    events = Events(panel.server.port)
    try:
        panel.wait_relay()
        panel.down()
        down = events.wait(lambda m: m.get("type") == "down", what="a down event")
        assert down["reason"]
        assert panel.get("/hearth/status")[1]["daemon"] == "down"
        pid = panel.up().proc.pid
        panel.wait_relay()
        back = events.wait(lambda m: m.get("type") == "status" and m.get("pid") == pid, what="the new daemon's status")
        assert "roots" not in back and all("path" not in s for s in back["segments"])
    finally:
        events.close()


def test_the_pack_imported_twice_has_its_routes_and_relay_once(panel):
    log = panel.server.log()
    imported = re.findall(r"seconds( \(IMPORT FAILED\))?: \S*/custom_nodes/(\S+)$", log, re.MULTILINE)
    assert sorted(imported) == [("", PACK_NAME), ("", TWIN)], log[-3000:]  # ComfyUI's list of import times
    assert "could not add the panel's routes" not in log
    port = json.loads((panel.up().home / "daemon.json").read_text())["port"]
    events = Events(panel.server.port)
    try:
        panel.wait_relay()
        # A second relay would be on its own backoff (10 s at most) and not poked by the status route: give
        # it that long to connect, then every event would reach the browser twice.
        time.sleep(11.0)
        relays = panel.server.log().count(f"relaying the daemon's events (port {port})")
        assert relays == 1, panel.server.log()[-3000:]
        assert panel.call("POST", "/hearth/preload", {"folder": "loras", "name": LORA})[0] == 200
        panel.wait_ready(LORA)
        events.wait(lambda m: m.get("action") == "ready" and m.get("name") == LORA, what="a ready event")
        time.sleep(0.5)  # a copy would follow within milliseconds
        ready = [m for m in events.messages if m.get("action") == "ready" and m.get("name") == LORA]
        assert len(ready) == 1, ready
    finally:
        events.close()
        panel.call("POST", "/hearth/evict", {"all": True})


# ---- the browser's doors --------------------------------------------------------------------------

# What a page would make ComfyUI's routes do if it could: each would change the daemon's state.
ATTEMPTS = [("/hearth/preload", {"folder": "checkpoints", "name": CKPT}),
            ("/hearth/pin", {"folder": "loras", "name": LORA, "pinned": True}),
            ("/api/hearth/pin", {"folder": "loras", "name": LORA, "pinned": True}),  # ComfyUI's /api/ twin
            ("/hearth/evict", {"folder": "loras", "name": LORA}),
            ("/hearth/evict", {"all": True})]
PLAIN = "text/plain;charset=UTF-8"  # what fetch(url, {method: "POST", body: "..."}) sends, without preflight
FORM = "application/x-www-form-urlencoded"

# Each: headers given the LAN Host and the loopback one, the answer's status, and whether ComfyUI lets the
# request through in every supported release (then the refusal must be Hearth's own, with its reason).
REFUSED = [
    pytest.param(lambda lan, lo: {"Host": lan, "Origin": EVIL}, 403, True, id="JSON from another origin"),
    pytest.param(lambda lan, lo: {"Host": lan, "Origin": EVIL, "Content-Type": PLAIN}, 403, True,
                 id="text/plain simple request"),
    pytest.param(lambda lan, lo: {"Host": lan, "Origin": EVIL, "Content-Type": FORM}, 403, True, id="form post"),
    pytest.param(lambda lan, lo: {"Host": lan, "Origin": f"http://{LAN_IP}:3000"}, 403, True,
                 id="another port of the same host"),
    pytest.param(lambda lan, lo: {"Host": lan, "Origin": "null", "Content-Type": PLAIN}, 403, True,
                 id="sandboxed frame, Origin null"),
    pytest.param(lambda lan, lo: {"Host": lan, "Sec-Fetch-Site": "cross-site", "Content-Type": PLAIN}, 403, False,
                 id="no Origin, Sec-Fetch-Site cross-site"),  # 0.28 refuses this one itself
    pytest.param(lambda lan, lo: {"Host": lan, "Sec-Fetch-Site": "same-site"}, 403, True,
                 id="no Origin, Sec-Fetch-Site same-site"),
    pytest.param(lambda lan, lo: {"Host": lo, "Origin": EVIL, "Content-Type": PLAIN}, 403, False,
                 id="loopback Host, text/plain from another origin"),  # ComfyUI refuses this one itself
    pytest.param(lambda lan, lo: {"Host": lan, "Origin": f"http://{lan}", "Content-Type": PLAIN}, 400, True,
                 id="this ComfyUI's page, text/plain body"),
    pytest.param(lambda lan, lo: {"Host": lan, "Content-Type": FORM}, 400, True, id="a program, form body"),
]


def _daemon_state(panel) -> dict:
    """What the daemon holds, read from the daemon itself: segments (state, pinned) and waiting fills."""
    doc = panel.daemon.status()
    return {"segments": sorted((s["path"], s["state"], s["pinned"]) for s in doc["segments"]),
            "pending": doc.get("pending")}


def _with_lora_ready(panel) -> None:
    panel.up()
    panel.call("POST", "/hearth/evict", {"folder": "checkpoints", "name": CKPT})
    panel.call("POST", "/hearth/pin", {"folder": "loras", "name": LORA, "pinned": False})
    if panel.segment(LORA) is None:
        assert panel.call("POST", "/hearth/preload", {"folder": "loras", "name": LORA})[0] == 200
    assert panel.wait_ready(LORA)["pinned"] is False and panel.segment(CKPT) is None


@pytest.mark.parametrize("headers, status, ours", REFUSED)
def test_requests_a_page_of_another_origin_can_make_are_refused_and_change_nothing(panel, headers, status, ours):
    _with_lora_ready(panel)
    before = _daemon_state(panel)
    sent = headers(panel.lan_host(), f"127.0.0.1:{panel.server.port}")
    for route, body in ATTEMPTS:
        reply = panel.request("POST", route, body, sent)
        assert reply.status == status, (route, sent, reply)
        doc = reply.doc
        if ours or doc:
            code = "not_allowed" if status == 403 else "bad_request"
            assert doc["error"]["code"] == code, (route, sent, doc)
            assert ("refused" if status == 403 else "application/json") in doc["error"]["message"], doc
        assert "access-control-allow-origin" not in reply.headers
        assert _daemon_state(panel) == before, (route, sent)


@pytest.mark.parametrize("host", ["lan", "loopback"])
def test_a_page_of_this_comfyui_may_preload_pin_and_evict(panel, host):
    panel.up()
    addressed = panel.lan_host() if host == "lan" else f"127.0.0.1:{panel.server.port}"
    page = {"Host": addressed, "Origin": f"http://{addressed}", "Sec-Fetch-Site": "same-origin"}
    status, doc = panel.call("POST", "/hearth/preload", {"folder": "checkpoints", "name": CKPT}, page)
    assert status == 200 and doc["queued"][0]["name"] == CKPT, doc
    panel.wait_ready(CKPT)
    status, doc = panel.call("POST", "/api/hearth/pin", {"folder": "checkpoints", "name": CKPT, "pinned": True}, page)
    assert status == 200 and panel.segment(CKPT)["pinned"] is True, doc
    status, doc = panel.call("POST", "/hearth/evict", {"folder": "checkpoints", "name": CKPT}, page)
    assert status == 200 and panel.segment(CKPT) is None, doc


@pytest.mark.parametrize("route", ["/hearth/status", "/hearth/models", "/api/hearth/models"])
def test_a_page_of_another_origin_cannot_read_the_status_or_the_model_names(panel, route):
    _with_lora_ready(panel)
    lan = panel.lan_host()
    for headers in ({"Host": lan, "Origin": EVIL}, {"Host": lan, "Origin": f"http://{LAN_IP}:3000"},
                    {"Host": lan, "Sec-Fetch-Site": "same-site"}, {"Host": lan, "Sec-Fetch-Site": "cross-site"}):
        reply = panel.request("GET", route, headers=headers)
        assert reply.status == 403, (headers, reply)
        assert LORA.encode() not in reply.raw and CKPT.encode() not in reply.raw
        assert "access-control-allow-origin" not in reply.headers
    reply = panel.request("GET", route, headers={"Host": lan, "Sec-Fetch-Site": "same-origin"})
    assert reply.status == 200 and LORA.encode() in reply.raw, reply
    assert "access-control-allow-origin" not in reply.headers
    token = (panel.daemon.home / "token").read_text().strip()
    assert token.encode() not in reply.raw and str(panel.models).encode() not in reply.raw


def test_with_comfyuis_cors_header_a_page_of_another_origin_still_cannot_use_the_routes(panel, tmp_path):
    """`--enable-cors-header '*'` grants every preflight, adds Access-Control-Allow-Origin to every answer and
    turns ComfyUI's own Origin check off: a loopback Host is then as open as a LAN one."""
    _with_lora_ready(panel)
    s = panel.server
    cors = ComfyServer(s.checkout, tmp_path / "comfy", s.extra_model_paths, s.env_overrides,
                       ("--enable-cors-header", "*")).start()
    try:
        other, host = Panel(cors, panel.daemon, panel.models), f"127.0.0.1:{cors.port}"
        page = {"Host": host, "Origin": EVIL}
        preflight = other.request("OPTIONS", "/hearth/pin", headers={
            **page, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
        assert preflight.status == 200 and preflight.headers["access-control-allow-origin"] == "*"
        reply = other.request("GET", "/hearth/models", headers=page)
        assert reply.status == 403 and LORA.encode() not in reply.raw, reply
        assert reply.headers["access-control-allow-origin"] == "*"  # readable by the page: hence the refusal
        before = _daemon_state(panel)
        for route, body in ATTEMPTS:
            status, doc = other.call("POST", route, body, page)
            assert status == 403 and doc["error"]["code"] == "not_allowed", (route, doc)
            assert _daemon_state(panel) == before, route
        status, doc = other.call("GET", "/hearth/models", headers={"Host": host, "Sec-Fetch-Site": "same-origin"})
        assert status == 200 and doc["loras"] == [LORA], doc
    finally:
        cors.stop()
