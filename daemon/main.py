"""Running the daemon: one per user, loopback only, announced through daemon.json when ready."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import threading
import time

from aiohttp import web

from ..core.home import daemon_info_path, ensure_home

from ..core.jsonfile import read_json, write_json_atomic

from ..core.token import create_token
from ..core.version import PROTOCOL, __version__
from .http import make_app
from .service import Service

log = logging.getLogger("hearth.daemon")


def default_port() -> int:
    return int(os.environ.get("HEARTH_PORT", "7788"))


def run(port: int | None = None, headless: bool = True) -> int:
    """Serve until SIGINT/SIGTERM or the tray's Quit. Returns 0, also when another daemon already runs.

    Without `headless`, a tray icon is shown where a display allows one; where none does, the daemon
    says why and runs headless.
    """
    home = ensure_home()
    token = create_token()  # raises Unauthorized for a token file others can read
    lock_fd = os.open(home / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        info = read_json(daemon_info_path(), {}) or {}
        log.warning("a Hearth daemon is already running (pid %s, port %s)", info.get("pid"), info.get("port"))
        os.close(lock_fd)
        return 0
    port = default_port() if port is None else port
    tray = None if headless else _make_tray()
    try:
        if tray is None:
            asyncio.run(_serve(home, token, port))
        else:
            _serve_with_tray(tray, home, token, port)
    finally:
        try:
            os.unlink(daemon_info_path())
        except FileNotFoundError:
            pass
        os.close(lock_fd)
    return 0


def _make_tray():
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


def _serve_with_tray(tray, home, token: str, port: int) -> None:
    """The tray lives on the server's loop: it starts once the server listens and closes after it stops."""
    async def serve() -> None:
        try:
            await _serve(home, token, port, tray.attach)
        finally:
            await tray.close()

    asyncio.run(serve())


async def _serve(home, token: str, port: int, on_ready=None) -> None:
    # Signals first: once daemon.json is written a client (or a test) may already send SIGTERM, which
    # must stop the daemon cleanly rather than kill it with the default action.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    service = Service(home)
    await service.start()
    runner = web.AppRunner(make_app(service, token), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    if on_ready is not None:
        on_ready(service, loop, stop, bound, token)
    write_json_atomic(daemon_info_path(), {"pid": os.getpid(), "port": bound, "version": __version__,
                                           "protocol": PROTOCOL, "started": time.time()})
    log.info("Hearth daemon %s listening on 127.0.0.1:%d (state in %s)", __version__, bound, home)
    try:
        await stop.wait()
    finally:
        await service.stop()
        await runner.cleanup()
