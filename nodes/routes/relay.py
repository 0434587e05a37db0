"""The relay of the daemon's events to ComfyUI's browsers: a thread of its own with an event loop of its own.

It reads the daemon's websocket (/v1/events, with the token ComfyUI holds) and forwards each event, its paths
replaced by names, to every browser of ComfyUI as "hearth.cache" (`PromptServer.send_sync` is thread-safe).
It reconnects with backoff forever and never raises into ComfyUI: the panel is optional, the server is not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from ...client.connection import connect
from ...core.errors import HearthError
from .redact import redact_event

log = logging.getLogger("hearth.routes")

EVENT = "hearth.cache"
THREAD_NAME = "hearth-events"


class Relay:
    """Forwards the daemon's websocket events to ComfyUI's browsers; reconnects with backoff, forever."""

    MIN_WAIT, MAX_WAIT = 1.0, 10.0

    def __init__(self, send: Callable[[str, dict], None]):
        self.send = send
        self.up = False  # connected to the daemon's event stream
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    def poke(self) -> None:
        """Cut the current backoff short (thread-safe)."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            loop.call_soon_threadsafe(wake.set)

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self._main, name=THREAD_NAME, daemon=True)
        t.start()
        return t

    def _main(self) -> None:
        try:
            asyncio.run(self._forever())
        except BaseException:  # a relay that dies must not take ComfyUI with it
            log.exception("Hearth: the panel's event relay stopped")

    async def _forever(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        wait = self.MIN_WAIT
        while True:
            self._wake.clear()
            try:
                reason = await self._once()
                wait = self.MIN_WAIT  # it was connected: a daemon restart is retried quickly
            except HearthError as e:
                reason = e.message
            except Exception as e:  # noqa: BLE001 - aiohttp, OS and JSON errors alike: try again later
                reason = f"{type(e).__name__}: {e}"
            if self.up:
                self.up = False
                log.info("Hearth: lost the daemon's events (%s); retrying", reason)
                self._emit({"type": "down", "reason": reason})
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass
            wait = min(wait * 2, self.MAX_WAIT)

    async def _once(self) -> str:
        import aiohttp

        conn = await asyncio.to_thread(connect, 5.0)
        url = f"http://127.0.0.1:{conn.port}/v1/events"
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, params={"token": conn.token}, heartbeat=30) as ws:
                log.info("Hearth: relaying the daemon's events (port %d) to the panel", conn.port)
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        event = json.loads(msg.data)
                        if event.get("type") == "status":
                            self.up = True  # the daemon's first message: from here on nothing is missed
                        self._emit(event)
                    elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                        break
        return "the daemon closed its event stream"

    def _emit(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        try:
            self.send(EVENT, redact_event(event))
        except Exception:  # a bad event is dropped, the relay goes on
            log.debug("Hearth: could not forward an event", exc_info=True)

