"""Running the daemon: one per user, loopback only, announced through daemon.json when ready."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import time

from aiohttp import web

from ..state import create_token, daemon_info_path, ensure_home, read_json, write_json_atomic
from ..version import PROTOCOL, __version__
from .http import make_app
from .service import Service

log = logging.getLogger("hearth.daemon")


def default_port() -> int:
    return int(os.environ.get("HEARTH_PORT", "7788"))


def run(port: int | None = None) -> int:
    """Serve until SIGINT/SIGTERM. Returns 0, also when another daemon of this user is already up."""
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
    try:
        asyncio.run(_serve(home, token, default_port() if port is None else port))
    finally:
        try:
            os.unlink(daemon_info_path())
        except FileNotFoundError:
            pass
        os.close(lock_fd)
    return 0


async def _serve(home, token: str, port: int) -> None:
    service = Service(home)
    await service.start()
    runner = web.AppRunner(make_app(service, token), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    write_json_atomic(daemon_info_path(), {"pid": os.getpid(), "port": bound, "version": __version__,
                                           "protocol": PROTOCOL, "started": time.time()})
    log.info("Hearth daemon %s listening on 127.0.0.1:%d (state in %s)", __version__, bound, home)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await service.stop()
        await runner.cleanup()
