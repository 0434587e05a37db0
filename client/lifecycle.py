"""Keeping the user's daemon: make sure one runs, start it where none does, replace one older than the pack.

Who asks: the pack inside ComfyUI when it loads (nodes/lifecycle.py, on a thread of its own) and the client
when a load finds no daemon. A script that uses the library starts nothing unless HEARTH_START_DAEMON=1:
a library call should not leave a process behind unasked.

Opt-outs, any one of which stops the pack from starting or replacing the daemon (one that runs is still
used): HEARTH_START_DAEMON=0, `start_with_comfyui: false` in config.json, and the host's veto (ComfyUI's
setting Hearth.StartDaemon, read by nodes/lifecycle.py).

Replacing: a daemon whose version is older than the pack's is asked to stop only if it is idle (no segment
held or leased, no fill: the daemon checks that itself, so no acquire slips in between), then ours starts and
re-adopts its segments (index.json in the same HEARTH_HOME). A busy one stays, said once; a newer one stays.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from ..core.command import PACK_DIR, hint
from ..core.errors import Busy, DaemonUnavailable, HearthError
from ..core.home import hearth_home
from ..core.jsonfile import read_json
from ..core.switch import switch
from ..core.version import PROTOCOL, __version__, is_older
from .connection import Connection, connect
from .spawn import start_daemon, wait_stopped

log = logging.getLogger("hearth.client")

RETRY_S = 60.0  # after a failed start, loads do not try again (and wait for it) sooner than this
STOP_WAIT_S = 10.0

_lock = threading.Lock()
_keeping = False  # this process keeps the daemon (the pack inside ComfyUI called keep())
_host_veto: Callable[[], str | None] | None = None
_state: dict[str, Any] = {"state": "idle", "reason": None}
_failed_at = -RETRY_S
_said: str | None = None


def keep(host_veto: Callable[[], str | None] | None = None) -> None:
    """This process keeps the user's daemon from now on; `host_veto()` returns why not to start one, or None."""
    global _keeping, _host_veto
    _keeping, _host_veto = True, host_veto


def opted_out() -> str | None:
    """Why the daemon must not be started or replaced from this process, or None."""
    if os.environ.get("HEARTH_DISABLE"):
        return "HEARTH_DISABLE is set"
    env = switch(os.environ.get("HEARTH_START_DAEMON", ""))
    if env is False:
        return "HEARTH_START_DAEMON=0"
    if env is None and not _keeping:
        return "this process does not start the daemon (set HEARTH_START_DAEMON=1 for it to)"
    config = read_json(hearth_home() / "config.json", {}) or {}
    if switch(config.get("start_with_comfyui", True)) is False:
        return "start_with_comfyui is off in config.json"
    if _host_veto is not None:
        try:
            return _host_veto()
        except Exception as e:  # noqa: BLE001 - a host that cannot say is no veto
            log.debug("host veto failed: %s", e)
    return None


def state() -> dict[str, Any]:
    """What the last check found: state idle|running|started|replaced|outdated|incompatible|off|failed, reason,
    pid, version."""
    return dict(_state)


def revive() -> bool:
    """For a load that found no daemon: start one where allowed (not again within RETRY_S of a failed start).

    Whether a daemon is up now. Waits for a check already under way on another thread (the one at load).
    """
    if opted_out() is not None or time.monotonic() - _failed_at < RETRY_S:
        return False
    return ensure()["state"] in ("running", "started", "replaced", "outdated")


def ensure() -> dict[str, Any]:
    """Make sure the user's daemon runs, as far as the opt-outs allow; the resulting state(). Never raises."""
    with _lock:
        try:
            _set(**_ensure())
        except Exception as e:  # noqa: BLE001 - the daemon is optional; the process that asked is not
            _set(state="failed", reason=f"{type(e).__name__}: {e}")
        return state()


def _ensure() -> dict[str, Any]:
    global _failed_at
    why_not = opted_out()
    try:
        conn = connect(timeout=5.0, check=False)
        health = conn.get("/v1/health", timeout=5.0)
    except DaemonUnavailable:
        if why_not is not None:
            return {"state": "off", "reason": f"the pack does not start it: {why_not}"}
        try:
            proc = start_daemon(headless=False)
        except HearthError as e:
            _failed_at = time.monotonic()
            return {"state": "failed", "reason": f"could not start the daemon: {e.message}"}
        return _up("started", f"started the daemon of {PACK_DIR}", proc.pid)
    version, protocol = health.get("version"), health.get("protocol")
    if not is_older(version):
        if protocol != PROTOCOL:  # a newer daemon this pack cannot talk to: the pack is the one to update
            return {"state": "incompatible", "pid": conn.pid, "version": version,
                    "reason": f"the running daemon {version} (pid {conn.pid}) speaks protocol {protocol}, this "
                              f"pack {__version__} speaks {PROTOCOL}: update the pack; models load the "
                              f"normal way meanwhile"}
        return {"state": "running", "reason": None, "pid": conn.pid, "version": version}
    if why_not is not None:
        return _outdated(conn, health, f"not replaced: {why_not}")
    return _replace(conn, health)


def _replace(conn: Connection, health: dict) -> dict[str, Any]:
    try:
        conn.post("/v1/shutdown", {"unless_busy": True}, timeout=5.0)
    except Busy as e:
        return _outdated(conn, health, e.message)
    if not wait_stopped(timeout=STOP_WAIT_S):
        return _outdated(conn, health, f"it did not stop within {STOP_WAIT_S:.0f} s")
    try:
        proc = start_daemon(headless=False)
    except HearthError as e:
        return {"state": "failed", "reason": f"stopped the daemon {health.get('version')} but could not start "
                                             f"this pack's: {e.message}"}
    return _up("replaced", f"replaced the daemon {health.get('version')} (pid {conn.pid}) with this pack's",
               proc.pid)


def _outdated(conn: Connection, health: dict, why: str) -> dict[str, Any]:
    version = health.get("version")
    usable = "" if health.get("protocol") == PROTOCOL else "; models load the normal way meanwhile"
    return {"state": "outdated", "pid": conn.pid, "version": version,
            "reason": f"the running daemon is {version} (pid {conn.pid}) and this pack {__version__}; {why}. "
                      f"It is replaced when no ComfyUI uses it; `{hint('restart')}` replaces it now "
                      f"(processes using its models keep them){usable}"}


def _up(name: str, what: str, spawned: int) -> dict[str, Any]:
    """The state after a start: the daemon that answers now, ours or one another process started meanwhile."""
    global _failed_at
    try:
        conn = connect(timeout=5.0)
    except DaemonUnavailable as e:
        _failed_at = time.monotonic()
        return {"state": "failed", "reason": f"a daemon runs but does not answer: {e.message}"}
    if conn.pid != spawned:
        return {"state": "running", "reason": None, "pid": conn.pid, "version": conn.version}
    return {"state": name, "reason": what, "pid": conn.pid, "version": conn.version}


def _panel() -> str:
    """Where the pack's user finds the panel. No token: ComfyUI serves its console to every browser that
    reaches it (the frontend's logs panel), LAN included; `status` prints the standalone page with its token."""
    return f"its panel: the Hearth tab (a flame) in ComfyUI's sidebar, or the page `{hint('status')}` prints"


def _set(**new: Any) -> None:
    """Record the state; say it in one console line when it changed (a failure once, not at every load)."""
    global _said
    _state.clear()
    _state.update({"reason": None, **new})
    line = f"{new['state']}: {new.get('reason')}"
    if line == _said:
        return
    _said = line
    if new["state"] in ("failed", "outdated", "incompatible"):
        log.warning("Hearth: %s", new["reason"])
    elif new["state"] in ("started", "replaced"):
        log.info("Hearth: %s (pid %s, version %s); it keeps running after this process exits (`%s` stops it); %s",
                 new["reason"], new.get("pid"), new.get("version"), hint("stop"), _panel())
    elif new["state"] == "running":
        log.info("Hearth: using the running daemon %s (pid %s); %s", new.get("version"), new.get("pid"), _panel())
    else:
        log.info("Hearth: no daemon runs and %s", new.get("reason"))
