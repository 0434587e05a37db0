"""`hearth autostart on|off`: the login files in a temporary XDG_CONFIG_HOME, and each one really starts a daemon.

The unit's command line is run with what a systemd user service gets (PATH, HOME and the unit's own
Environment=), after systemd's own parser has checked the file (`systemd-analyze verify`). The autostart
entry is launched by GLib's desktop-entry launcher (`gio launch`), as desktop sessions do. The daemon's
home has a space, a `%` and a `$` in its name: each file format quotes them its own way.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

PY = sys.executable


@pytest.fixture
def env(tmp_path):
    shm = Path("/dev/shm") / f"pytest-hearth-autostart-{os.getpid()}"
    shm.mkdir(mode=0o700, exist_ok=True)
    e = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    e.update({"XDG_CONFIG_HOME": str(tmp_path / "config"), "HOME": str(tmp_path / "home"),
              "HEARTH_HOME": str(tmp_path / "hearth home %x $y"), "HEARTH_SHM_DIR": str(shm), "HEARTH_PORT": "0"})
    (tmp_path / "home").mkdir()
    yield e
    shutil.rmtree(shm, ignore_errors=True)


def autostart(env: dict, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([PY, "-m", "comfyui_hearth.cli", "autostart", *args], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def paths(env: dict) -> tuple[Path, Path, Path]:
    config = Path(env["XDG_CONFIG_HOME"])
    return (config / "systemd/user/comfyui-hearth.service",
            config / "systemd/user/default.target.wants/comfyui-hearth.service",
            config / "autostart/comfyui-hearth.desktop")


def test_on_writes_the_unit_and_the_entry_and_off_removes_them(env, monkeypatch):
    unit, wants, desktop = paths(env)
    out = autostart(env, "on").stdout
    assert f"wrote {unit}" in out and f"wrote {desktop}" in out and "HEARTH_HOME" in out, out
    assert wants.is_symlink() and wants.resolve() == unit.resolve()
    text = unit.read_text()
    assert "\nLimitMEMLOCK=infinity\n" in text and "\nWantedBy=default.target\n" in text
    assert "\nRestart=on-failure\n" in text
    assert desktop.read_text().startswith("# Written by") and "\nType=Application\n" in desktop.read_text()
    assert autostart(env).stdout.startswith("start at login: on")

    # the panel's toggle (Service.autostart) reads and changes the same files
    from comfyui_hearth.daemon.service import Service

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    home = Path(env["HEARTH_HOME"])
    home.mkdir(mode=0o700)
    service = Service(home)
    assert asyncio.run(service.autostart())["enabled"] is True
    off = asyncio.run(service.autostart(False))
    assert off["enabled"] is False and any(line == f"removed {desktop}" for line in off["done"]), off
    assert not unit.exists() and not wants.exists() and not desktop.exists()
    assert autostart(env).stdout.strip() == "start at login: off"

    autostart(env, "on")
    out = autostart(env, "off").stdout
    assert f"removed {unit}" in out and f"removed {desktop}" in out, out
    assert not (unit.exists() or wants.is_symlink() or desktop.exists())
    assert "nothing to remove" in autostart(env, "off").stdout


def systemd_words(value: str) -> list[str]:
    """A unit's command line as systemd splits it (systemd.syntax: quotes, backslash escapes, `%%`, `$$`)."""
    words, word, quote, i, started = [], "", None, 0, False
    escapes = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'", " ": " "}
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            word += escapes.get(value[i + 1], value[i + 1])
            i += 2
            started = True
            continue
        if quote:
            if c == quote:
                quote = None
            else:
                word += c
        elif c in "\"'":
            quote, started = c, True
        elif c.isspace():
            if started:
                words.append(word)
            word, started = "", False
        else:
            word, started = word + c, True
        i += 1
    if started:
        words.append(word)
    return [w.replace("%%", "%").replace("$$", "$") for w in words]


def wait_for_daemon(home: Path, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            info = json.loads((home / "daemon.json").read_text())
            if info.get("port"):
                return info
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"no daemon announced itself in {home}")


def health(info: dict) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{info['port']}/v1/health", timeout=10) as r:
        return json.loads(r.read())


def stop(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:  # not our child (gio started it): gone, or a zombie its new parent has not reaped yet
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    raise AssertionError(f"daemon {pid} did not stop")


def test_the_units_command_line_starts_a_daemon(env):
    autostart(env, "on")
    unit = paths(env)[0]
    if shutil.which("systemd-analyze"):  # systemd's own parser (where systemd is installed)
        check = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                               timeout=60)
        assert check.returncode == 0 and check.stderr == "", check.stderr
    lines = unit.read_text().splitlines()
    argv = systemd_words(next(line for line in lines if line.startswith("ExecStart="))[len("ExecStart="):])
    unit_env = dict(w.split("=", 1) for line in lines if line.startswith("Environment=")
                    for w in systemd_words(line[len("Environment="):]))
    assert unit_env["HEARTH_HOME"] == env["HEARTH_HOME"]
    assert argv[-1] == "daemon" and os.path.isabs(argv[0])
    # what a systemd user service has: no DISPLAY, no PYTHONPATH, no virtualenv activated
    proc = subprocess.Popen(argv, env={"PATH": "/usr/bin:/bin", "HOME": env["HOME"], **unit_env},
                            cwd=env["HOME"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        info = wait_for_daemon(Path(env["HEARTH_HOME"]))
        assert info["pid"] == proc.pid and health(info)["ok"] is True
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_the_autostart_entry_starts_a_daemon(env):
    if shutil.which("gio") is None:
        pytest.skip("gio is not installed (apt-get install libglib2.0-bin): it launches desktop entries as "
                    "sessions do")
    autostart(env, "on")
    desktop = paths(env)[2]
    log = Path(env["HOME"]) / "gio.log"
    with open(log, "w") as out:  # the daemon inherits it: a pipe would stay open as long as the daemon runs
        launch = subprocess.run(["gio", "launch", str(desktop)], env={"PATH": "/usr/bin:/bin", "HOME": env["HOME"]},
                                cwd=env["HOME"], stdout=out, stderr=out, timeout=30)
    assert launch.returncode == 0, log.read_text()
    info = wait_for_daemon(Path(env["HEARTH_HOME"]))
    try:
        assert health(info)["ok"] is True
    finally:
        stop(info["pid"])
