"""The tray icon on a real X server (Xvfb): its menu drives the real Service; no display means headless."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from comfyui_hearth.core.home import ensure_home
from comfyui_hearth.core.token import create_token

from conftest import make_model

pytestmark = pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb is not installed (apt-get install xvfb)")


@pytest.fixture
def display():
    num = 90 + os.getpid() % 100
    proc = subprocess.Popen(["Xvfb", f":{num}", "-screen", "0", "640x480x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{num}").exists():
        assert time.monotonic() < deadline, "Xvfb did not start"
        time.sleep(0.05)
    yield f":{num}"
    proc.terminate()
    proc.wait()


@pytest.fixture
def env(tmp_path, monkeypatch, display):
    shm = Path("/dev/shm") / f"pytest-hearth-tray-{os.getpid()}"
    shm.mkdir()
    models = tmp_path / "models"
    for k, v in {"HEARTH_HOME": str(tmp_path / "home"), "HEARTH_SHM_DIR": str(shm), "HEARTH_PORT": "0",
                 "HEARTH_MODEL_DIRS": str(models), "DISPLAY": display}.items():
        monkeypatch.setenv(k, v)
    yield models
    shutil.rmtree(shm, ignore_errors=True)


def _wait(cond, what, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _item(items, text):
    return next(i for i in items if i.text == text)


def test_tray_menu_preloads_evicts_and_quits(env):
    from comfyui_hearth.daemon import main
    from comfyui_hearth.daemon.tray import Tray

    model = make_model(env / "a.safetensors")
    tray = Tray()
    home = ensure_home()
    server = threading.Thread(target=lambda: asyncio.run(main._serve(home, create_token(), 0, tray.attach)))
    server.start()
    try:
        _wait(lambda: tray.service is not None, "the server to attach to the tray")
        items = list(tray._items())
        assert items[0].text.endswith("cached") and not items[0].enabled
        preload = _item(items, "Preload").submenu.items
        _item(preload, "a.safetensors")(tray.icon)
        svc = tray.service
        _wait(lambda: any(e.state == "ready" for e in svc.entries.values()), "the preload from the menu")
        assert [e.source.path for e in svc.entries.values()] == [str(model.resolve())]
        # The menu now offers it for eviction and no longer for preloading.
        items = list(tray._items())
        assert [i.text for i in _item(items, "Evict").submenu.items] == ["a.safetensors", "All"]
        _item(_item(items, "Evict").submenu.items, "All")(tray.icon)
        _wait(lambda: not svc.entries, "evict all from the menu")
        assert "#token=" in tray.url and tray.url.startswith("http://127.0.0.1:")
        _item(list(tray._items()), "Quit")(tray.icon)
        server.join(timeout=15)
        assert not server.is_alive(), "Quit did not stop the daemon"
    finally:
        if server.is_alive():
            tray.loop.call_soon_threadsafe(tray._stop.set)
            server.join(timeout=15)


def test_daemon_without_display_runs_headless_and_says_why(tmp_path):
    env = {**os.environ, "HEARTH_HOME": str(tmp_path / "home"), "HEARTH_PORT": "0",
           "HEARTH_SHM_DIR": str(tmp_path)}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    proc = subprocess.Popen([sys.executable, "-m", "comfyui_hearth.cli", "daemon"], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: (tmp_path / "home" / "daemon.json").exists(), "the daemon to start")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert "no display: running headless" in err


def test_daemon_with_display_shows_the_icon_and_stops_on_sigterm(tmp_path, display):
    from Xlib.display import Display

    env = {**os.environ, "HEARTH_HOME": str(tmp_path / "home"), "HEARTH_PORT": "0",
           "HEARTH_SHM_DIR": str(tmp_path), "DISPLAY": display}
    proc = subprocess.Popen([sys.executable, "-m", "comfyui_hearth.cli", "daemon"], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: (tmp_path / "home" / "daemon.json").exists(), "the daemon to start")
        root = Display(display).screen().root

        def names(w):
            for c in w.query_tree().children:
                yield c.get_wm_name()
                yield from names(c)

        # Xvfb has no system tray, so pystray shows its icon as a small window named after the app.
        _wait(lambda: "Hearth" in set(names(root)), "the tray icon's window")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
