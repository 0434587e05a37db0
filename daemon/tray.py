"""The tray icon: preload, evict, open the panel, quit, as thin calls into the one Service.

pystray runs on the main thread; the daemon's asyncio loop runs on another, so every action is handed
to the loop with run_coroutine_threadsafe / call_soon_threadsafe and never touches the Service directly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import webbrowser
from pathlib import Path

from ..core.sizes import format_size
from ..core.model_files import is_cached_kind
from .service import Service

log = logging.getLogger("hearth.tray")

MENU_FILES = 25


def icon_image():
    """A small ember: drawn here so the pack ships no binary icon for the tray."""
    from PIL import Image, ImageDraw

    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.ellipse((6, 6, 58, 58), fill=(40, 24, 16, 255))
    d.polygon([(32, 10), (48, 40), (32, 54), (16, 40)], fill=(255, 120, 20, 255))
    d.polygon([(32, 26), (40, 42), (32, 50), (24, 42)], fill=(255, 210, 80, 255))
    return img


def model_files(roots: list[str], limit: int = MENU_FILES) -> list[str]:
    """The newest model files under the allowed roots, for the Preload menu."""
    found = []
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            found += [os.path.join(dirpath, f) for f in files if is_cached_kind(f)]
            if len(found) > 20 * limit:
                break
    found.sort(key=lambda p: os.stat(p).st_mtime if os.path.exists(p) else 0, reverse=True)
    return found[:limit]


class Tray:
    """The icon and its menu, attached to a running Service once the daemon is up."""

    def __init__(self):
        import pystray  # fails without a display server: the caller then runs headless

        self._pystray = pystray
        self.service: Service | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.url = ""
        self._quit = threading.Event()
        self.icon = pystray.Icon("hearth", icon_image(), "Hearth", menu=pystray.Menu(self._items))

    def attach(self, service: Service, loop: asyncio.AbstractEventLoop, stop: asyncio.Event,
               port: int, token: str) -> None:
        self.service, self.loop, self._stop = service, loop, stop
        # The token travels in the fragment, which browsers never send to a server.
        self.url = f"http://127.0.0.1:{port}/#token={token}"
        if self.icon._running:  # before icon.run() the backend has nothing to update; run() shows it
            self.icon.update_menu()
        if self._quit.is_set():  # Quit or a signal came before the server was up
            stop.set()

    def _call(self, coro_or_fn, *args) -> None:
        if self.loop is None:
            return
        if asyncio.iscoroutinefunction(coro_or_fn):
            asyncio.run_coroutine_threadsafe(coro_or_fn(*args), self.loop)
        else:
            self.loop.call_soon_threadsafe(coro_or_fn, *args)

    async def _snapshot(self) -> tuple[int, int, list[str], list[str]]:
        svc = self.service
        return svc.used(), svc.budget(), sorted(e.source.path for e in svc.entries.values()), svc.roots()

    def _items(self):
        item, menu = self._pystray.MenuItem, self._pystray.Menu
        if self.service is None:
            yield item("Hearth is starting...", None, enabled=False)
            return
        # Menus are built on the tray's thread; the entries belong to the loop's thread, so ask it.
        used, budget, cached, roots = asyncio.run_coroutine_threadsafe(self._snapshot(), self.loop).result(5)
        yield item(f"{format_size(used)} of {format_size(budget)} cached", None, enabled=False)
        yield item("Open panel", lambda: webbrowser.open(self.url), default=True)
        to_load = [p for p in model_files(roots) if p not in cached]
        yield item("Preload", menu(*[item(Path(p).name, self._preloader(p)) for p in to_load]
                                   or [item("(nothing else in the model folders)", None, enabled=False)]))
        yield item("Evict", menu(*[item(Path(p).name, self._evicter(p)) for p in cached],
                                 item("All", lambda: self._call(self.service.evict, None, True))))
        yield item("Quit", self.quit)

    def _preloader(self, path: str):
        return lambda: self._call(self.service.preload, [path])

    def _evicter(self, path: str):
        return lambda: self._call(self.service.evict, path)

    def run(self) -> None:
        """Block on the tray's event loop (main thread) until quit."""
        self.icon.run()

    def quit(self) -> None:
        self._quit.set()
        if self.loop is not None and self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        self.icon.stop()
