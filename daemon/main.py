"""Running the daemon: one per user, loopback only, announced through daemon.json when ready.

Life cycle, as daemon.json and daemon.lock tell it to clients and to a second `hearth daemon`:
- daemon.lock (flock) is held from the start until the process exits: one daemon per HEARTH_HOME;
- daemon.json appears with state "ready" once the daemon serves, says "stopping" from the moment a stop
  begins, and is removed just before the lock is let go;
- a second start waits while the holder is starting or stopping, then reports the running one or starts.
A stop closes every connection at once (the events websockets included: ComfyUI's relay holds one open)
and bounds what is still in flight, so it takes well under 2 s whatever is connected.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..core.command import hint
from ..core.errors import DaemonUnavailable
from ..core.home import daemon_info_path, ensure_home
from ..core.jsonfile import read_json, write_json_atomic
from ..core.token import create_token
from ..core.version import PROTOCOL, __version__
from .http import make_app
from .service import Service

if TYPE_CHECKING:  # the tray imports its desktop libraries, which a headless daemon may lack
    from .tray import Tray

# what runs once the server listens: (service, loop, the stop event, the bound port, the token)
OnReady = Callable[[Service, asyncio.AbstractEventLoop, asyncio.Event, int, str], None]

log = logging.getLogger("hearth.daemon")

DEFAULT_PORT = 7788
# How long a start waits for a daemon that holds the lock to become ready or to finish stopping.
LOCK_WAIT_S = 30.0
# What a stop leaves requests still being answered before they are cut (acquires waiting on a fill end
# at once: the fills are cancelled first).
STOP_GRACE_S = 0.5


def run(port: int | None = None, headless: bool = True) -> int:
    """Serve until SIGINT/SIGTERM, POST /v1/shutdown or the tray's Quit. Returns 0, also when another daemon
    already runs.

    `port` None: $HEARTH_PORT, else 7788 or, where another program has it, any free port (clients read the
    port from daemon.json). Without `headless`, a tray icon is shown where a display allows one; where none
    does, the daemon says why and runs headless.
    """
    home = ensure_home()
    token = create_token()  # raises Unauthorized for a token file others can read
    lock_fd = _take_lock(home)
    if lock_fd is None:
        return 0
    flexible = port is None and not os.environ.get("HEARTH_PORT")
    port = (int(os.environ.get("HEARTH_PORT") or DEFAULT_PORT)) if port is None else port
    tray = None if headless else _make_tray()
    try:
        if tray is None:
            asyncio.run(_serve(home, token, port, flexible=flexible))
        else:
            _serve_with_tray(tray, home, token, port, flexible)
    finally:
        try:
            os.unlink(daemon_info_path())
        except FileNotFoundError:
            pass
        os.close(lock_fd)
    log.info("stopped")
    return 0


def _take_lock(home: Path) -> int | None:
    """daemon.lock, held: the fd; None when a ready daemon runs (said in one line). Waits while the holder
    is starting or stopping; DaemonUnavailable when it stays in between for LOCK_WAIT_S."""
    fd = os.open(home / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + LOCK_WAIT_S
    waiting_for = None
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            pass
        info = read_json(daemon_info_path(), {}) or {}
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        # (a daemon.json without "state" is an older daemon's, written only once it was ready)
        if info.get("state", "ready") == "ready" and str(info.get("pid")) == holder and _alive(info["pid"]):
            log.warning("a Hearth daemon is already running (pid %s, port %s)", holder, info.get("port"))
            os.close(fd)
            return None
        state = "stopping" if info.get("state") == "stopping" else "starting"
        if waiting_for != state:
            log.info("waiting for the Hearth daemon (pid %s), which is %s", holder, state)
            waiting_for = state
        if time.monotonic() > deadline:
            os.close(fd)
            raise DaemonUnavailable(f"the Hearth daemon (pid {holder}) has been {state} for {LOCK_WAIT_S:.0f} s; "
                                    f"see its log in {home}")
        time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # who holds it, for the message above
    return fd


def _alive(pid: Any) -> bool:  # what daemon.json says: an int when well formed
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        pass
    return True


def _make_tray() -> Tray | None:
    """The tray, or None where its modules cannot load (then the daemon runs without one, saying why).

    Which icon it shows, if any, is decided once the server listens (tray.py): where no tray exists it says
    so in one line, with the panel's address.
    """
    try:
        from .tray import Tray

        return Tray()
    except Exception as e:  # noqa: BLE001 - any tray failure means no tray, never no daemon
        log.warning("the tray icon is not available (%s): running headless", e)
        return None


def _serve_with_tray(tray: Tray, home: Path, token: str, port: int, flexible: bool) -> None:
    """The tray lives on the server's loop: it starts once the server listens and closes after it stops."""
    async def serve() -> None:
        try:
            await _serve(home, token, port, tray.attach, flexible=flexible)
        finally:
            await tray.close()

    asyncio.run(serve())


def _announce(state: str, port: int, started: float) -> None:
    write_json_atomic(daemon_info_path(), {"pid": os.getpid(), "port": port, "version": __version__,
                                           "protocol": PROTOCOL, "started": started, "state": state})


async def _listen(runner: web.AppRunner, port: int, flexible: bool) -> int:
    """Bind 127.0.0.1:`port`; where it is taken and the port was not asked for, any free one. The bound port."""
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
        if not flexible:
            raise DaemonUnavailable(f"port {port} on 127.0.0.1 is taken by another program "
                                    f"(HEARTH_PORT or --port chose it; 0 takes any free port)") from None
        log.info("port %d is taken by another program: listening on a free port instead", port)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner.addresses[0][1]


async def _serve(home: Path, token: str, port: int, on_ready: OnReady | None = None,
                 flexible: bool = False) -> None:
    # Signals first: once daemon.json is written a client (or a test) may already send SIGTERM, which
    # must stop the daemon cleanly rather than kill it with the default action.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    service = Service(home, request_stop=stop.set)
    await service.start()
    runner = web.AppRunner(make_app(service, token), access_log=None, handle_signals=False,
                           shutdown_timeout=STOP_GRACE_S)
    await runner.setup()
    try:
        bound = await _listen(runner, port, flexible)
        if on_ready is not None:
            on_ready(service, loop, stop, bound, token)
        started = time.time()
        _announce("ready", bound, started)
        # The panel's address; its token only to a terminal: a log file keeps no token (SECURITY.md), and
        # `hearth status` prints the address with it.
        panel = f"http://127.0.0.1:{bound}/"
        panel = f"{panel}#token={token}" if sys.stderr.isatty() else f"{panel} (`{hint('status')}` adds its token)"
        log.info("Hearth daemon %s listening on 127.0.0.1:%d (state in %s); panel: %s", __version__, bound, home,
                 panel)
        await stop.wait()
        log.info("stopping")
        _announce("stopping", bound, started)
        for site in list(runner.sites):
            await site.stop()  # no new connections from here on
    finally:
        await service.stop()  # fills cancelled: acquires waiting on them are answered at once
        await runner.cleanup()  # closes the websockets, cuts what is left after STOP_GRACE_S
