"""The panel's side of ComfyUI: /hearth/ routes, the daemon's events relayed to browsers, the served JS.

One ComfyUI of its own (its HEARTH_HOME is this module's), and a daemon that the tests stop and start: the
routes must answer with the daemon down, pick it up when it comes back, and relay its events throughout.
The daemon allows no model folder of its own: preloading by name works only because the routes register
ComfyUI's folders, as the nodes do.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the harness lives at the repository's root
from harness.checkout import find_comfyui  # noqa: E402
from harness.daemon import Daemon  # noqa: E402
from harness.server import PACK_NAME, ComfyServer, write_extra_model_paths  # noqa: E402

CKPT, LORA = "panel-ckpt.safetensors", "panel-lora.safetensors"


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

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(self.server.url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

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
    server = ComfyServer(checkout, root / "comfy", write_extra_model_paths(root / "extra.yaml", models),
                         {"HEARTH_HOME": str(daemon.home), "HEARTH_DISABLE": None})
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
