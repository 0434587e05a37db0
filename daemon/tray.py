"""The tray icon: the desktop's view of the one Service (preload, evict, pin, pause, open the panel, quit).

It runs on the daemon's asyncio loop and picks, once the server is up, the first way an icon can be shown:
1. a StatusNotifierItem on the session bus (tray_sni), when a StatusNotifierWatcher with a host runs there:
   KDE, XFCE, GNOME with the AppIndicator extension, waybar; X11 or Wayland, with a real menu;
2. else pystray's XEmbed icon (tray_xembed), when an X display has a system tray: a left click opens the
   panel, since that tray draws no menu;
3. else none, said in one log line (why, and where the panel is; never the token). Where a session bus
   exists the item stays exported there and registers when a watcher appears (a panel that starts after
   the daemon at login, or restarts).
The menu is one model (tray_menu) drawn by both backends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import webbrowser
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from ..core.home import ensure_home
from . import tray_menu
from .service import Service
from .tray_menu import Entry

if TYPE_CHECKING:  # both import their desktop libraries, which a headless daemon may lack
    from PIL import Image

    from .tray_sni import SniTray
    from .tray_xembed import XembedTray

log = logging.getLogger("hearth.tray")

SETTLE_S = 0.5  # a burst of cache events (a preload of many files) rebuilds the menu once


def icon_image() -> Image.Image:
    """A small ember: drawn here so the pack ships no binary icon for the tray."""
    from PIL import Image, ImageDraw

    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.ellipse((6, 6, 58, 58), fill=(40, 24, 16, 255))
    d.polygon([(32, 10), (48, 40), (32, 54), (16, 40)], fill=(255, 120, 20, 255))
    d.polygon([(32, 26), (40, 42), (32, 50), (24, 42)], fill=(255, 210, 80, 255))
    return img


class Tray:
    """Attached to the Service once the daemon listens (`attach` is the server's on_ready hook)."""

    def __init__(self) -> None:
        self.image = icon_image()
        # service, loop and _stop: set by attach(), before anything else of the tray runs
        self.service: Service
        self.loop: asyncio.AbstractEventLoop
        self.url = ""     # the panel with the token in the fragment, which browsers never send to a server
        self.panel = ""   # the same without the token, for logs
        self._stop: asyncio.Event
        self._backend: SniTray | XembedTray | None = None
        self._tasks: set[asyncio.Future] = set()

    def attach(self, service: Service, loop: asyncio.AbstractEventLoop, stop: asyncio.Event,
               port: int, token: str) -> None:
        self.service, self.loop, self._stop = service, loop, stop
        self.panel = f"http://127.0.0.1:{port}/"
        self.url = f"{self.panel}#token={token}"
        self._spawn(self._start())

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- choosing the backend -----------------------------------------------------------------------

    async def _start(self) -> None:
        try:
            why_not = await self._show()
        except Exception:  # a tray bug must cost the icon, never the daemon
            log.exception("tray: the icon could not be shown; the panel is at %s", self.panel)
            return
        if why_not:
            log.warning("%s", why_not)
        self._spawn(self._follow())

    async def _show(self) -> str | None:
        """Start the first backend that can show the icon; None when one does, else the one line why not."""
        reasons: list[str] = []
        sni = None
        from .tray_sni import session_bus_address

        address = session_bus_address()
        if address is None:
            reasons.append("no session bus")
        else:
            sni, why = await self._start_sni(address)
            if why is None:  # shown
                self._backend = sni
                log.info("tray: icon shown by the desktop's tray (StatusNotifierItem on the session bus)")
                return None
            reasons.append(why)
        display = os.environ.get("DISPLAY")
        if display:
            from .tray_xembed import XembedTray, tray_manager

            present, said = await asyncio.to_thread(tray_manager, display)
            if present:
                if sni is not None:  # one icon only, should a host join that watcher later
                    await sni.close()
                    sni = None
                xembed = XembedTray(self.image, self.window_name, self.build, self.activate_threadsafe)
                try:
                    await xembed.start()
                except Exception as e:  # noqa: BLE001 - no icon is never a reason for no daemon
                    said = f"pystray could not show the XEmbed icon ({type(e).__name__}: {e})"
                else:
                    self._backend = xembed
                    log.info("tray: icon docked in the %s (that tray draws no menu: a left click opens the "
                             "panel)", said)
                    return None
            reasons.append(said)
        if not (display or os.environ.get("WAYLAND_DISPLAY")) and sni is None:
            return (f"no desktop session (no DISPLAY, WAYLAND_DISPLAY or session bus): running headless; "
                    f"the panel is at {self.panel}")
        self._backend = sni  # still exported: it registers with a watcher that appears later
        hint = (" (GNOME shows tray icons only with the AppIndicator extension)"
                if any("no StatusNotifierWatcher" in r for r in reasons) else "")
        later = "; the icon appears if a tray starts on the session bus" if sni is not None else ""
        return (f"no system tray: {'; '.join(reasons)}{hint}: running without a tray icon{later}; "
                f"the panel is at {self.panel}")

    async def _start_sni(self, address: str) -> tuple[SniTray | None, str | None]:
        """(the item, None) when a host shows it; (the item, why) when it waits for one; (None, why)."""
        try:
            from .tray_sni import SniTray
        except ImportError:
            return None, "dbus-fast is not installed (pip install dbus-fast), so no StatusNotifierItem"
        sni = SniTray(address, self.image, self.tooltip, self.build, self.activate, self.open_panel_soon)
        try:
            shown, why = await sni.start()
        except Exception as e:  # noqa: BLE001 - a bus that refuses us: try the next way
            await sni.close()
            return None, f"the session bus {address} cannot be used ({type(e).__name__}: {e})"
        return sni, None if shown else why

    # ---- the menu and its actions -------------------------------------------------------------------

    async def build(self) -> tuple[Entry, ...]:
        """The menu for the Service's state now (walking the model folders off the loop)."""
        svc = self.service
        cached = {e.source.path for e in svc.entries.values()}
        recent = await asyncio.to_thread(tray_menu.recent_models, svc.roots(), cached)
        return tray_menu.build(svc, recent, self.open_panel, self.quit)

    def tooltip(self) -> str:
        return tray_menu.tooltip(self.service)

    def window_name(self) -> str:
        """The XEmbed icon's window name, which such trays show as its tooltip: one line."""
        return f"Hearth: {tray_menu.summary(self.service)}"

    def activate(self, entry: Entry) -> None:
        """A click, on the loop: run the entry's action, then show the new state."""
        async def run() -> None:
            await tray_menu.activate(entry)
            await self._changed()

        self._spawn(run())

    def activate_threadsafe(self, entry: Entry) -> None:
        """A click on pystray's thread."""
        self.loop.call_soon_threadsafe(self.activate, entry)

    def open_panel_soon(self) -> None:
        self._spawn(self.open_panel())

    async def open_panel(self) -> None:
        # webbrowser may wait for the browser command ($BROWSER): never on the loop
        if not await asyncio.to_thread(webbrowser.open, self.url):
            log.warning("tray: no web browser could be started; the panel is at %s (its token is in %s)",
                        self.panel, ensure_home() / "token")

    def quit(self) -> None:
        """Stop the daemon the way SIGTERM does."""
        log.info("tray: Quit")
        self._stop.set()

    # ---- keeping it current -------------------------------------------------------------------------

    async def _follow(self) -> None:
        """Rebuild the menu and tooltip when the cache changes (fill progress alone does not)."""
        queue = self.service.subscribe()
        try:
            while True:
                event = await queue.get()
                if event.get("type") == "fill":
                    continue
                await asyncio.sleep(SETTLE_S)
                while not queue.empty():
                    queue.get_nowait()
                await self._changed()
        finally:
            self.service.unsubscribe(queue)

    async def _changed(self) -> None:
        if self._backend is None:
            return
        try:
            await self._backend.changed()
        except Exception as e:  # noqa: BLE001 - a bus or X connection that went away: the daemon goes on
            log.debug("tray: update failed: %s", e)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._backend is not None:
            await self._backend.close()
            self._backend = None
