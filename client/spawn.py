"""Starting the daemon as a separate, detached process of the user (demo, benchmarks, client autostart)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from ..core.errors import DaemonUnavailable
from ..core.home import daemon_info_path, ensure_home
from ..core.jsonfile import read_json


def start_daemon(env: dict[str, str] | None = None, timeout: float = 30.0) -> subprocess.Popen:
    """Start `hearth daemon --headless` in its own session and wait until it announces itself.

    `env` replaces the environment (it decides HEARTH_HOME and the port). The daemon outlives the caller.
    """
    env = dict(os.environ if env is None else env)
    home = ensure_home(env)
    info_path = daemon_info_path(env)
    before = read_json(info_path)
    log = open(home / "daemon.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "comfyui_hearth.cli", "daemon", "--headless"],
                            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True)
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = read_json(info_path)
        if isinstance(info, dict) and info != before and "port" in info:
            return proc
        if proc.poll() is not None:
            if proc.returncode == 0 and isinstance(info, dict):
                return proc  # another daemon of this user was already running
            raise DaemonUnavailable(f"the daemon exited with {proc.returncode}; see {home / 'daemon.log'}")
        time.sleep(0.05)
    proc.terminate()
    raise DaemonUnavailable(f"the daemon did not start within {timeout:.0f} s; see {home / 'daemon.log'}")
