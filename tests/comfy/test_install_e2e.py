"""Installed the way ComfyUI users install packs, in a real ComfyUI: the pack starts and keeps its daemon.

The install: the registry's archive (`comfy node pack`) unpacked into a custom_nodes folder that an
extra_model_paths YAML names; only requirements.txt for ComfyUI's Python (checked offline: pip has nothing to
fetch); a fresh HOME; no HEARTH_* variable at all, so the daemon is a user's: /dev/shm, port 7788 or a free
one (its segments are named after its own HEARTH_HOME, so no other daemon's are touched); and no
comfyui_hearth importable in ComfyUI's environment (checked; skipped where a pip install would make it so).
Needs comfy-cli (requirements-dev.txt) and a ComfyUI checkout; skips with the reason otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from harness.checkout import comfy_env
from harness.install import PACK_NAME, comfy_cli, older_copy, pack_tree, registry_archive, unpack
from harness.models import ModelFolder
from harness.server import ComfyServer

from .comfy_support import CKPT, hearth_graph

DAEMON_WAIT_S = 60.0


@pytest.fixture(scope="module")
def archive(comfy_checkout, tmp_path_factory) -> Path:
    if comfy_cli() is None:
        pytest.skip("comfy-cli is not installed (requirements-dev.txt)")
    tree = pack_tree(tmp_path_factory.mktemp("e2e-tree") / PACK_NAME)
    return registry_archive(tree, tmp_path_factory.mktemp("comfy-cli-home"))


class Install:
    """One user's machine: HOME, a custom_nodes folder holding the unpacked archive, the YAML naming it."""

    def __init__(self, root: Path, archive: Path, checkout: Path, models: ModelFolder):
        self.root, self.checkout, self.models = root, checkout, models
        self.home = root / "home"
        self.home.mkdir()
        self.state = self.home / ".config" / "hearth"  # HEARTH_HOME's default for this HOME
        self.pack = unpack(archive, root / "shared-nodes" / PACK_NAME)
        self.yaml = root / "extra_model_paths.yaml"  # JSON is YAML
        self.yaml.write_text(json.dumps({
            "models": {"base_path": str(models.root), "checkpoints": "checkpoints", "loras": "loras"},
            "nodes": {"custom_nodes": str(self.pack.parent)}}, indent=1))
        # Nothing of Hearth, no desktop: what ComfyUI's environment holds besides is the test machine's.
        self.env = {k: None for k in os.environ if k.startswith(("HEARTH_", "XDG_"))}
        self.env.update(HOME=str(self.home), DISPLAY=None, WAYLAND_DISPLAY=None, DBUS_SESSION_BUS_ADDRESS=None)
        self.hearth = [sys.executable, str(self.pack / "hearth.py")]

    def plain_env(self) -> dict[str, str]:
        return comfy_env(self.checkout, pack_importable=False, **self.env)

    def comfy(self, name: str, settings: dict | None = None) -> ComfyServer:
        base = self.root / name
        if settings is not None:
            (base / "user" / "default").mkdir(parents=True)
            (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(settings))
        return ComfyServer(self.checkout, base, self.yaml, self.env, pack=None)

    def info(self) -> dict | None:
        try:
            doc = json.loads((self.state / "daemon.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return doc if doc.get("state") == "ready" else None

    def wait_daemon(self, timeout: float = DAEMON_WAIT_S) -> dict:
        deadline = time.monotonic() + timeout
        while (info := self.info()) is None:
            assert time.monotonic() < deadline, f"no daemon ready within {timeout:.0f} s"
            time.sleep(0.05)
        return info

    def daemons(self) -> list[psutil.Process]:
        """This user's daemon processes (there must be one at most)."""
        found = []
        for p in psutil.process_iter(["cmdline", "environ"]):
            cmd, env = p.info["cmdline"] or [], p.info["environ"] or {}
            if env.get("HOME") == str(self.home) and "daemon" in cmd and any(c.endswith("hearth.py") for c in cmd):
                found.append(p)
        return found

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.hearth, *args], env=self.plain_env(), capture_output=True, text=True,
                              timeout=60)

    def cleanup(self) -> None:
        """Stop this user's daemon and remove its segments (named after its HEARTH_HOME) from /dev/shm."""
        if self.info() is not None:
            self.cli("evict", "--all")
        self.cli("stop")
        for p in self.daemons():
            p.kill()
        tag = hashlib.blake2b(os.path.realpath(self.state).encode(), digest_size=3).hexdigest()
        for name in os.listdir("/dev/shm"):
            if name.lstrip(".").startswith(f"hearth-{os.getuid()}-{tag}-"):
                os.unlink(f"/dev/shm/{name}")


@pytest.fixture
def install(archive, comfy_checkout, models, tmp_path):
    inst = Install(tmp_path, archive, comfy_checkout, models)
    probe = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('comfyui_hearth'))"],
                           env=inst.plain_env(), capture_output=True, text=True, timeout=60)
    if probe.stdout.strip() != "None":
        pytest.skip(f"ComfyUI's Python has comfyui_hearth installed ({probe.stdout.strip()}): the custom_nodes "
                    f"install cannot be tried from a clean start (pip uninstall comfyui-hearth)")
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--dry-run", "-r",
                          str(inst.pack / "requirements.txt")], env=inst.plain_env(), capture_output=True, text=True,
                         timeout=180)
    assert pip.returncode == 0, pip.stderr  # ComfyUI-Manager's `pip install -r requirements.txt`: all there
    try:
        yield inst
    finally:
        inst.cleanup()


def _checkpoint_load(server: ComfyServer) -> dict:
    [load] = [x for x in server.run(hearth_graph()).hearth_loads() if x["kind"] == "checkpoint"]
    return load


def _post(server: ComfyServer, path: str, body: object) -> None:
    """A POST that ComfyUI answers with an empty body (its settings and /free routes)."""
    req = urllib.request.Request(server.url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200


def _exited(pid: int) -> bool:
    """The process ended: gone, or a zombie its parent has not reaped yet (a daemon started by `hearth.py
    start` is reparented to the machine's init, which may reap it late)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _import_seconds(log: str, pack: Path) -> float:
    """What ComfyUI's "Import times for custom nodes" says of the pack."""
    for line in log.splitlines():
        found = re.search(r"([0-9.]+) seconds: (.*)$", line.strip())
        if found and found.group(2) == str(pack):  # (0.28 prefixes its lines with a coloured [INFO])
            return float(found.group(1))
    raise AssertionError(f"no import time for {pack} in ComfyUI's log")


def test_the_pack_starts_its_daemon_and_the_daemon_outlives_comfyui(install):
    assert install.info() is None and not install.daemons()
    first = install.comfy("comfy-1")
    t0, wall0 = time.monotonic(), time.time()
    with first:
        ready = time.monotonic() - t0
        info = install.wait_daemon()
        daemon_after = info["started"] - wall0  # the daemon's own clock when it became ready
        [proc] = install.daemons()
        assert proc.pid == info["pid"] and proc.cmdline()[1:] == [str(install.pack / "hearth.py"), "daemon"]
        assert os.path.realpath(proc.cwd()) == os.path.realpath(install.state)
        assert os.getsid(proc.pid) != os.getsid(first.proc.pid)  # detached: ComfyUI's end is not its end
        load = _checkpoint_load(first)
        assert load["status"] == "miss", load  # the first load fills the cache
        log = first.log()
    assert f"Hearth: started the daemon of {install.pack}" in log, log[-3000:]
    assert "it keeps running after this process exits" in log
    print(f"\nComfyUI ready after {ready:.1f} s, daemon ready {daemon_after:.1f} s after ComfyUI's start; "
          f"ComfyUI's import time of the pack {_import_seconds(log, install.pack):.2f} s")
    assert proc.is_running() and install.info()["pid"] == proc.pid  # ComfyUI exited; the daemon did not

    second = install.comfy("comfy-2")
    with second:
        assert _checkpoint_load(second)["status"] == "hit"  # started after the first exited: the cache is warm
        log = second.log()
    assert f"Hearth: using the running daemon 0.1.0 (pid {proc.pid})" in log, log[-3000:]
    assert proc.is_running() and install.info()["pid"] == proc.pid
    status = install.cli("status")
    assert status.returncode == 0 and CKPT in status.stdout and "ready" in status.stdout, status


def test_the_setting_start_daemon_off_is_honoured_and_on_again_starts_it(install):
    server = install.comfy("comfy-off", settings={"Hearth.StartDaemon": False})
    with server:
        deadline = time.monotonic() + DAEMON_WAIT_S
        while "the pack does not start it: ComfyUI's setting Hearth.StartDaemon is off" not in server.log():
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.2)
        status = server.get("/hearth/status")
        assert status["daemon"] == "down" and "Hearth.StartDaemon is off" in status["reason"], status
        assert status["hint"].endswith("hearth.py start") and status["start"]["state"] == "off"
        assert _checkpoint_load(server)["status"] == "fallback"  # loads still work, the stock way
        assert install.info() is None and not install.daemons()
        # Turned on in ComfyUI's settings (what the settings dialog sends): the next Hearth load starts it.
        _post(server, "/settings/Hearth.StartDaemon", True)
        _post(server, "/free", {"free_memory": True})  # else ComfyUI reuses the loader's output: no load
        assert _checkpoint_load(server)["status"] == "miss"
        assert install.info() is not None and len(install.daemons()) == 1


def test_an_older_daemon_is_replaced_and_its_segments_survive(install):
    old = older_copy(install.root / "old-pack")
    env = install.plain_env()
    started = subprocess.run([sys.executable, str(old / "hearth.py"), "start", "--headless"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 0 and "0.0.1" in started.stdout, started
    old_pid = install.info()["pid"]
    ckpt = install.models.checkpoint(CKPT)
    for args in (["config", "model_dirs", str(ckpt.parent)], ["preload", str(ckpt)]):
        r = subprocess.run([sys.executable, str(old / "hearth.py"), *args], env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r
    server = install.comfy("comfy-new")
    with server:
        info = install.wait_daemon()
        deadline = time.monotonic() + DAEMON_WAIT_S
        while info["version"] != "0.1.0":
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.1)
            info = install.wait_daemon()
        assert info["pid"] != old_pid and _exited(old_pid)
        assert _checkpoint_load(server)["status"] == "hit"  # re-adopted by the new daemon, not refilled
        log = server.log()
    assert f"replaced the daemon 0.0.1 (pid {old_pid})" in log, log[-3000:]


def test_two_comfyui_processes_starting_at_once_start_one_daemon(install):
    servers = [install.comfy("comfy-a"), install.comfy("comfy-b")]
    errors: list[BaseException] = []

    def start(s: ComfyServer) -> None:
        try:
            s.start()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        info = install.wait_daemon()
        deadline = time.monotonic() + DAEMON_WAIT_S
        logs = ["", ""]
        while not all(f"(pid {info['pid']}" in log for log in logs):
            assert time.monotonic() < deadline, logs
            time.sleep(0.2)
            logs = [s.log() for s in servers]
        time.sleep(1.0)  # a second daemon, had one been started, would be up by now
        assert [p.pid for p in install.daemons()] == [info["pid"]]
        assert sum("Hearth: started the daemon" in log for log in logs) == 1, logs
    finally:
        for s in servers:
            s.stop()
