"""Hearth's sidebar tab and top-bar meter in a real ComfyUI frontend, driven in headless Chromium.

ComfyUI serves its own frontend (comfyui_frontend_package, in every release's requirements) and the pack's
web/ folder; the browser talks to the /hearth/ routes only. A daemon of this module's own (HEARTH_HOME and
shm folder), so pins, evictions and the budget changed here touch no other test. Hearth.StockLoaders is left
to ComfyUI's settings (no HEARTH_STOCK_LOADERS), so the panel's toggle decides it.

Skipped, with the reason, without a ComfyUI checkout (and the browser's test without chromium).
"""

from __future__ import annotations

import http.client
import json
import shutil
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from harness.browser import CHROMIUM, Browser
from harness.daemon import Daemon
from harness.models import ModelFolder
from harness.server import ComfyServer

from .comfy_support import CKPT, LORA_A, hearth_graph

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")

TAB = ".side-bar-button:has(.hearth-flame)"
ACTIVITY = "document.querySelector('.hearth-activity')?.innerText ?? ''"


@pytest.fixture(scope="module")
def comfy_ui(comfy_checkout: Path, models: ModelFolder, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("sidebar")
    shm = Path("/dev/shm") / f"hearth-sidebar-tests-{uuid.uuid4().hex[:8]}"
    daemon = Daemon(root / "home", [], shm_dir=shm).start()
    server = ComfyServer(comfy_checkout, root / "comfy", models.extra_model_paths,
                         {"HEARTH_HOME": str(daemon.home), "HEARTH_DISABLE": None, "HEARTH_STOCK_LOADERS": None,
                          "HEARTH_START_DAEMON": "0"})
    try:
        server.start()
        # A first visit opens the templates browser over the canvas; a returning user's does not
        set_setting(server, "Comfy.TutorialCompleted", True)
        yield server, daemon
    finally:
        server.stop()
        daemon.stop()
        shutil.rmtree(shm, ignore_errors=True)


def set_setting(server: ComfyServer, key: str, value) -> None:
    req = urllib.request.Request(f"{server.url}/settings/{key}", data=json.dumps(value).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


def open_comfy(browser: Browser, server: ComfyServer):
    page = browser.page(server.url)
    page.wait("!!(window.app?.extensionManager && document.querySelector('.hearth-meter'))", timeout=90,
              what="ComfyUI's frontend with Hearth's meter")
    return page


def hearth_errors(page) -> list[str]:
    return [e for e in page.errors if "hearth" in e.lower()]


@needs_chromium
def test_meter_tab_activity_pin_and_settings(comfy_ui, tmp_path):
    server, daemon = comfy_ui
    with Browser(tmp_path / "profile", width=1440, height=1000) as browser:
        page = open_comfy(browser, server)

        # The meter sits in the top bar and opens the tab
        page.wait("document.querySelector('.hearth-meter')?.title.startsWith('Hearth cache')", what="the meter")
        page.click(".hearth-meter")
        page.wait("!!document.querySelector('.hearth-panel .hearth-state.is-up')", what="the panel")
        assert page.eval("document.querySelector('.side-bar-button:has(.hearth-flame)')?.getAttribute('aria-label')")

        # A prompt's load is one line: the node's report, not also the daemon's acquire for ComfyUI
        run = server.run(hearth_graph())
        [load] = [e for e in run.hearth_loads() if e["kind"] == "checkpoint"]
        page.wait(f"{ACTIVITY}.includes('checkpoint {CKPT}: cache {load['status']}')", what="the load's line")
        time.sleep(2)  # the daemon's acquire, relayed, has arrived by now
        assert any(e.get("action") == "acquire" and e["pid"] == server.proc.pid
                   for e in daemon.api("GET", "/v1/activity")["events"])
        text = page.eval(ACTIVITY)
        assert f"{CKPT}: {load['status']} for ComfyUI" not in text, text
        assert text.count(f"checkpoint {CKPT}:") == 1, text

        row = f".hearth-cache .hearth-tr:has(.hearth-name[title='checkpoints/{CKPT}'])"
        held = page.wait(f"document.querySelector(\"{row} .hearth-inuse\") && "
                         f"document.querySelector(\"{row} .hearth-holders\").innerText", what="the holder")
        assert held == f"ComfyUI (pid {server.proc.pid})", held

        # The tab closed: the extension still listens, the reopened tab shows what happened meanwhile
        page.click(TAB)
        page.wait("!document.querySelector('.hearth-panel')", what="the tab to close")
        server.run(hearth_graph([(LORA_A, 1.0, 1.0)]))
        page.click(TAB)
        page.wait(f"{ACTIVITY}.includes('lora {LORA_A}: cache')", what="the load made while the tab was closed")
        assert f"checkpoint {CKPT}:" in page.eval(ACTIVITY)

        # Pin from the sidebar: the daemon pins the file ComfyUI names
        page.click(f"{row} .hearth-actions button:first-child")
        page.wait(f"!!document.querySelector(\"{row} .hearth-badge.is-pinned\")", what="the pinned badge")
        assert [s["pinned"] for s in daemon.status()["segments"] if s["path"].endswith(CKPT)] == [True]

        # Preload from ComfyUI's list of names
        page.select(".hearth-preload select", "loras")
        page.type('.hearth-preload input[aria-label="Model name"]', "lora_b.safetensors", enter=True)
        page.wait("!!document.querySelector(\".hearth-tr:has(.hearth-name[title='loras/lora_b.safetensors'])\")",
                  what="the preloaded LoRA")

        # Settings: the budget through the daemon, the stock loaders as ComfyUI's own setting
        page.type('.hearth-setting[data-setting="budget"] input', "2G", enter=True)
        deadline = time.monotonic() + 20
        while daemon.api("GET", "/v1/config")["budget"] != "2G":
            assert time.monotonic() < deadline, "the budget was not changed"
            time.sleep(0.1)
        stock = '.hearth-setting[data-setting="stock_loaders"] input'
        assert page.eval(f"document.querySelector('{stock}').checked") is True  # the default, on
        page.click(stock)
        page.wait(f"!document.querySelector('{stock}').checked && !document.querySelector('{stock}').disabled")
        settings_file = server.base / "user" / "default" / "comfy.settings.json"
        assert json.loads(settings_file.read_text())["Hearth.StockLoaders"] is False
        assert server.get("/hearth/settings")["stock_loaders"] == {
            "enabled": False, "source": "settings", "setting": "Hearth.StockLoaders", "env": "HEARTH_STOCK_LOADERS"}

        # A reload: the page's memory is gone, the daemon's history is not (now with its own acquire lines)
        page.goto(server.url, ready="!!document.querySelector('.hearth-meter')")
        page.click(TAB)
        page.wait(f"{ACTIVITY}.includes('{CKPT} pinned')", what="the history after a reload")
        text = page.eval(ACTIVITY)
        assert "settings: budget 2G" in text and f"{CKPT}: " in text, text
        assert hearth_errors(page) == [], page.errors


def call(server: ComfyServer, method: str, path: str, body=None, headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, None if body is None else json.dumps(body),
                     {"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        raw = r.read()
        return r.status, json.loads(raw) if raw else {}
    finally:
        conn.close()


def test_settings_route_changes_sizes_and_switches_only(comfy_ui):
    """A page may change the budget, the warm set, prefetch and start at login; never a list of paths."""
    server, daemon = comfy_ui
    for body in ({"model_dirs": ["/"]}, {"pinned": ["/etc/passwd"]}, {"max_fills": 16}, {"budget": "1G", "roots": []}):
        status, doc = call(server, "POST", "/hearth/settings", body)
        assert status == 400 and "cannot be changed from here" in doc["error"]["message"], (body, doc)
    assert daemon.api("GET", "/v1/config")["model_dirs"] == []
    status, doc = call(server, "POST", "/hearth/settings", {"budget": "lots"})
    assert status == 400 and doc["error"]["code"] == "bad_request", doc
    status, doc = call(server, "POST", "/hearth/settings", {"autostart": "yes"})
    assert status == 400 and "true or false" in doc["error"]["message"], doc
    status, doc = call(server, "POST", "/hearth/settings", {"warm_set": "paused"},
                       {"Origin": "http://evil.example"})
    assert status == 403 and daemon.api("GET", "/v1/config")["warm_set"] != "paused", doc
    status, doc = call(server, "POST", "/hearth/settings", {"warm_set": "paused", "warm_set_size": "1G"})
    assert status == 200 and doc["daemon"]["warm_set"] == "paused" and doc["daemon"]["warm_set_size"] == "1G"
    assert set(doc) == {"daemon", "autostart", "stock_loaders"} and "model_dirs" not in doc["daemon"]
    call(server, "POST", "/hearth/settings", {"warm_set": "on", "warm_set_size": "auto"})


def test_activity_and_status_name_models_never_paths(comfy_ui, models):
    """The history and every part of the status (fills, failures, warm set, holds) carry names only."""
    server, daemon = comfy_ui
    status, doc = call(server, "POST", "/hearth/preload", {"folder": "loras", "name": LORA_A})
    assert status == 200, doc
    status, doc = call(server, "POST", "/hearth/pin", {"folder": "loras", "name": LORA_A, "pinned": True})
    assert status == 200, doc
    roots = [str(models.root), str(models.root.resolve()), str(daemon.home)]
    for path in ("/hearth/activity", "/hearth/status", "/hearth/settings"):
        status, doc = call(server, "GET", path)
        assert status == 200
        text = json.dumps(doc)
        assert not any(r in text for r in roots), (path, text[:2000])
    events = call(server, "GET", "/hearth/activity")[1]["events"]
    assert any(e.get("action") == "pinned" and e["name"] == LORA_A and e["folder"] == "loras" for e in events)
    assert all("path" not in e for e in events)
    call(server, "POST", "/hearth/pin", {"folder": "loras", "name": LORA_A, "pinned": False})


def test_console_line_at_load_names_the_panel_without_the_token(comfy_ui):
    """ComfyUI's console reaches every browser of ComfyUI (its logs panel): the panel is named, the token is not."""
    server, daemon = comfy_ui
    deadline = time.monotonic() + 30
    while "Hearth: using the running daemon" not in server.log():
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.2)
    line = next(x for x in server.log().splitlines() if "Hearth: using the running daemon" in x)
    assert "its panel: the Hearth tab (a flame) in ComfyUI's sidebar, or the page `" in line
    assert "status` prints" in line
    token = (daemon.home / "token").read_text().strip()
    assert token not in server.log()
