"""The tray icon where an X desktop has only an XEmbed system tray, through pystray's Xorg backend.

That backend draws no menu (its HAS_MENU is false), so a left click runs the menu's default entry, "Open
panel", and the panel does the rest. Two pystray 0.19 faults are worked around here:
- its icon window is created without ButtonPressMask, so X never delivers the click and the default action
  never runs (pystray issue #151); we add the mask to the window (a private attribute: the tray tests
  click the icon through a real tray to catch a pystray that changed);
- with no tray manager it logs "Failed to dock icon" tracebacks and keeps an unmapped 1x1 window, and it
  never docks into a tray that starts later; so the icon is made only when the _NET_SYSTEM_TRAY_S<screen>
  selection has an owner (`tray_manager`).
It sends its dock request once; a tray that has just taken the selection (at login the daemon and the panel
start together) can drop it and the icon never shows, so `_keep_docked` sends it again until the window is
embedded.
The backend is forced to Xorg: a PyGObject in the environment would otherwise pick GTK or AppIndicator,
which need a GLib main loop on the main thread, which the daemon's asyncio loop holds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .tray_menu import Entry

if TYPE_CHECKING:  # pystray and python-xlib are imported when a tray starts
    from PIL import Image
    from Xlib.display import Display

log = logging.getLogger("hearth.tray")

DOCK_CHECK_S = 2.0   # how often the window is checked until a tray embeds it: long enough that a request
                     # the tray is still working on is not sent again
DOCK_TRIES = 15      # then one warning: the tray keeps ignoring us
SYSTEM_TRAY_REQUEST_DOCK = 0  # the system tray protocol's opcode


def _selection_owner(d: Display) -> Any:
    """The window that owns the system-tray selection of display `d`'s default screen (X.NONE: no tray)."""
    return d.get_selection_owner(d.intern_atom(f"_NET_SYSTEM_TRAY_S{d.get_default_screen()}"))


def tray_manager(display: str) -> tuple[bool, str]:
    """Whether an XEmbed tray manager owns the system-tray selection of `display`'s default screen."""
    from Xlib import X
    from Xlib.display import Display

    try:
        d = Display(display)
    except Exception as e:  # noqa: BLE001 - a bad or dead display: no XEmbed tray, and why
        return False, f"the X display {display} cannot be reached ({e})"
    try:
        owner = _selection_owner(d)
    finally:
        d.close()
    if owner == X.NONE:
        return False, f"no XEmbed system tray on {display}"
    return True, f"XEmbed system tray on {display}"


def dock(display: str, window_id: int) -> bool:
    """Whether the window is embedded in a tray; if not, ask the tray that owns the selection now to dock
    it (any client may send the request: it names the window)."""
    from Xlib import X
    from Xlib.display import Display
    from Xlib.protocol.event import ClientMessage

    d = Display(display)
    try:
        root = d.screen().root
        if d.create_resource_object("window", window_id).query_tree().parent != root:
            return True
        owner = _selection_owner(d)
        if owner != X.NONE:
            owner.send_event(ClientMessage(
                window=owner, client_type=d.intern_atom("_NET_SYSTEM_TRAY_OPCODE"),
                data=(32, (X.CurrentTime, SYSTEM_TRAY_REQUEST_DOCK, window_id, 0, 0))),
                event_mask=X.NoEventMask)
            d.flush()
        return False
    finally:
        d.close()


class XembedTray:
    """pystray's icon on its own thread; its clicks are handed to the daemon's loop by `activate`."""

    def __init__(self, image: Image.Image, name: Callable[[], str], build: Callable[[], Awaitable[tuple[Entry, ...]]],
                 activate: Callable[[Entry], None]):
        self._image, self._name, self._build, self._activate = image, name, build, activate
        self._entries: tuple[Entry, ...] = ()  # the last menu built on the loop; pystray's thread reads it
        self._icon = None
        self._docking: asyncio.Task | None = None

    async def start(self) -> None:
        self._entries = await self._build()
        os.environ["PYSTRAY_BACKEND"] = "xorg"
        import pystray
        import Xlib.X

        self._pystray = pystray
        icon = pystray.Icon("hearth", self._image, self._name(), menu=pystray.Menu(self._items))
        icon._window.change_attributes(
            event_mask=Xlib.X.ExposureMask | Xlib.X.StructureNotifyMask | Xlib.X.ButtonPressMask)
        self._icon = icon
        threading.Thread(target=icon.run, name="hearth-tray", daemon=True).start()
        self._docking = asyncio.create_task(self._keep_docked(os.environ["DISPLAY"], icon._window.id))

    async def _keep_docked(self, display: str, window_id: int) -> None:
        for _ in range(DOCK_TRIES):
            await asyncio.sleep(DOCK_CHECK_S)
            try:
                if await asyncio.to_thread(dock, display, window_id):
                    return
            except Exception as e:  # noqa: BLE001 - the display went away: the icon with it
                log.warning("tray: the XEmbed icon could not be docked (%s: %s)", type(e).__name__, e)
                return
        log.warning("tray: the XEmbed system tray on %s has not embedded the icon after %.0f s of asking",
                    display, DOCK_TRIES * DOCK_CHECK_S)

    def _items(self) -> list:
        return self._convert(self._entries)

    def _convert(self, entries: tuple[Entry, ...]) -> list:
        item, menu = self._pystray.MenuItem, self._pystray.Menu
        out = []
        for e in entries:
            if e.separator:
                out.append(menu.SEPARATOR)
            elif e.children:
                out.append(item(e.label, menu(*self._convert(e.children)), enabled=e.enabled))
            else:
                out.append(item(e.label, self._action(e), enabled=e.enabled, default=e.default,
                                checked=None if e.checked is None else (lambda _item, c=e.checked: c)))
        return out

    def _action(self, entry: Entry) -> Callable[[object, object], None]:
        return lambda _icon, _item: self._activate(entry)  # two arguments: pystray passes them as is

    async def changed(self) -> None:
        if self._icon is not None:
            self._entries = await self._build()
            self._icon.title = self._name()

    async def close(self) -> None:
        if self._docking is not None:
            self._docking.cancel()
            self._docking = None
        if self._icon is not None:
            await asyncio.to_thread(self._icon.stop)
            self._icon = None
