"""The tray icon where an X desktop has only an XEmbed system tray, through pystray's Xorg backend.

That backend draws no menu (its HAS_MENU is false), so a left click runs the menu's default entry, "Open
panel", and the panel does the rest. Two pystray 0.19 faults are worked around here:
- its icon window is created without ButtonPressMask, so X never delivers the click and the default action
  never runs (pystray issue #151); we add the mask to the window (a private attribute: the tray tests
  click the icon through a real tray to catch a pystray that changed);
- with no tray manager it logs "Failed to dock icon" tracebacks and keeps an unmapped 1x1 window, and it
  never docks into a tray that starts later; so the icon is made only when the _NET_SYSTEM_TRAY_S<screen>
  selection has an owner (`tray_manager`).
The backend is forced to Xorg: a PyGObject in the environment would otherwise pick GTK or AppIndicator,
which need a GLib main loop on the main thread, which the daemon's asyncio loop holds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable

from .tray_menu import Entry

log = logging.getLogger("hearth.tray")


def tray_manager(display: str) -> tuple[bool, str]:
    """Whether an XEmbed tray manager owns the system-tray selection of `display`'s default screen."""
    from Xlib import X
    from Xlib.display import Display

    try:
        d = Display(display)
    except Exception as e:  # noqa: BLE001 - a bad or dead display: no XEmbed tray, and why
        return False, f"the X display {display} cannot be reached ({e})"
    try:
        owner = d.get_selection_owner(d.intern_atom(f"_NET_SYSTEM_TRAY_S{d.get_default_screen()}"))
    finally:
        d.close()
    if owner == X.NONE:
        return False, f"no XEmbed system tray on {display}"
    return True, f"XEmbed system tray on {display}"


class XembedTray:
    """pystray's icon on its own thread; its clicks are handed to the daemon's loop by `activate`."""

    def __init__(self, image, name: Callable[[], str], build: Callable[[], Awaitable[tuple[Entry, ...]]],
                 activate: Callable[[Entry], None]):
        self._image, self._name, self._build, self._activate = image, name, build, activate
        self._entries: tuple[Entry, ...] = ()  # the last menu built on the loop; pystray's thread reads it
        self._icon = None

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

    def _items(self):
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

    def _action(self, entry: Entry):
        return lambda _icon, _item: self._activate(entry)  # two arguments: pystray passes them as is

    async def changed(self) -> None:
        if self._icon is not None:
            self._entries = await self._build()
            self._icon.title = self._name()

    async def close(self) -> None:
        if self._icon is not None:
            await asyncio.to_thread(self._icon.stop)
            self._icon = None
