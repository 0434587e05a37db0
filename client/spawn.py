"""Starting and stopping the user's daemon as a process of its own (the pack, the CLI, benchmarks, tests).

A daemon started here is detached: its own session (a Ctrl-C in ComfyUI's terminal does not reach it), its
working folder HEARTH_HOME (never the caller's: it must not keep a custom_nodes folder busy), no stdin, its
output appended to HEARTH_HOME/daemon.log. It runs from the pack's own folder through the launcher file
(hearth.py) with the caller's Python, so no pip install of the pack is needed. One daemon per user:
daemon.lock decides, whoever starts it.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import psutil

from ..core.command import launcher_argv
from ..core.errors import DaemonUnavailable
from ..core.home import daemon_info_path, ensure_home, hearth_home
from ..core.jsonfile import read_json

LOG_NAME = "daemon.log"
LOG_KEEP = 8 << 20  # a daemon.log over this is moved to daemon.log.1 at the next start


def start_daemon(env: Mapping[str, str] | None = None, timeout: float = 30.0,
                 headless: bool = False) -> subprocess.Popen:
    """Start `hearth daemon` detached and wait until a daemon of this HEARTH_HOME is ready.

    `env` replaces the environment (it decides HEARTH_HOME and the port). Without `headless` the daemon
    shows its tray icon where a desktop session is. When another daemon of the user is starting, running
    or stopping, the new process waits for it and exits 0 (main.py); this returns once one is ready.
    """
    env = dict(os.environ if env is None else env)
    home = ensure_home(env)
    info_path = daemon_info_path(env)
    log_path = home / LOG_NAME
    _rotate(log_path)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)  # whatever the umask, and for a log made before this was the rule
    with os.fdopen(fd, "ab") as log:
        argv = launcher_argv("daemon", *(["--headless"] if headless else []))
        proc = subprocess.Popen(argv, env=env, cwd=home,  # noqa: S603 - our own launcher's argv, no shell
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = read_json(info_path)
        ready = isinstance(info, dict) and info.get("state", "ready") == "ready" and "port" in info
        if ready and (info.get("pid") == proc.pid or proc.poll() == 0):
            return proc  # ours, or the one ours found running (it exits 0 saying so)
        if proc.poll() not in (None, 0):
            raise DaemonUnavailable(f"the daemon exited with {proc.returncode}: {_last_line(log_path)} "
                                    f"(log: {log_path})")
        time.sleep(0.05)
    if proc.poll() is None:
        proc.terminate()
    raise DaemonUnavailable(f"the daemon was not ready within {timeout:.0f} s (log: {log_path})")


def lock_holder(env: Mapping[str, str] | None = None) -> int | None:
    """The pid of the daemon that holds daemon.lock (starting, running or stopping), or None."""
    path = hearth_home(env) / "daemon.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a daemon starting now retries its lock
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def wait_stopped(env: Mapping[str, str] | None = None, timeout: float = 10.0) -> bool:
    """Wait until no daemon of this HEARTH_HOME holds its lock and the one that held it has exited; whether
    that happened within `timeout`."""
    deadline = time.monotonic() + timeout
    holder = lock_holder(env)
    while lock_holder(env) is not None or (holder is not None and holder > 0 and _running(holder)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _rotate(log_path: Path) -> None:
    try:
        if log_path.stat().st_size > LOG_KEEP:
            os.replace(log_path, log_path.with_name(LOG_NAME + ".1"))
    except FileNotFoundError:
        pass


def _last_line(log_path: Path) -> str:
    """The daemon's last words: the one line that says why it did not start."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [x.strip() for x in f.read().decode(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"
