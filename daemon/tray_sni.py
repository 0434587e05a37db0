"""The tray icon as a StatusNotifierItem with a com.canonical.dbusmenu menu, on dbus-fast and the daemon's loop.

StatusNotifierItem (SNI) is what KDE, XFCE, GNOME's AppIndicator extension and waybar/swaybar show, on X11
and Wayland alike: the desktop's panel draws the icon and the menu from what we export on the session bus,
so no toolkit and no PyGObject is needed. dbus-fast was chosen for its service objects on asyncio (MIT, no
dependencies, wheels for every supported Python); the spec points below were checked against xfce4-panel
and swaybar:
- we own `org.kde.StatusNotifierItem-<pid>-1`, export /StatusNotifierItem and /MenuBar, and register the
  name with org.kde.StatusNotifierWatcher; whenever the watcher gets a new owner (a panel that starts after
  us at login, or restarts) we register again;
- IconPixmap is ARGB32 in network byte order; ItemIsMenu is false, so a left click calls Activate (open
  the panel) on KDE and XFCE, while GNOME's extension opens the menu (so "Open panel" is also its first
  entry);
- dbusmenu ids follow the entries' keys (tray_menu), and the layout is rebuilt from the Service when a menu
  opens (AboutToShow) and when the cache changes (LayoutUpdated), only when it changed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property, method, signal

from .tray_menu import Entry

log = logging.getLogger("hearth.tray")

ITEM_PATH = "/StatusNotifierItem"
MENU_PATH = "/MenuBar"
WATCHER = "org.kde.StatusNotifierWatcher"
WATCHER_PATH = "/StatusNotifierWatcher"
DBUS = "org.freedesktop.DBus"
ICON_SIZES = (22, 32, 64)


def session_bus_address(env: Mapping[str, str] | None = None) -> str | None:
    """The user's session bus: the variable, else systemd's per-user bus (a daemon started at login by a
    unit, or detached from ComfyUI, may lack the variable; dbus-fast alone would not look there)."""
    env = os.environ if env is None else env
    if addr := env.get("DBUS_SESSION_BUS_ADDRESS"):
        return addr
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and os.path.exists(os.path.join(runtime, "bus")):
        return f"unix:path={runtime}/bus"
    return None


def argb_pixmaps(image) -> list[list]:
    """The icon at a few sizes as SNI pixmaps: (width, height, ARGB32 big-endian bytes); PIL gives RGBA."""
    out = []
    for size in ICON_SIZES:
        rgba = image.convert("RGBA").resize((size, size)).tobytes()
        argb = bytearray(len(rgba))
        argb[0::4], argb[1::4], argb[2::4], argb[3::4] = rgba[3::4], rgba[0::4], rgba[1::4], rgba[2::4]
        out.append([size, size, bytes(argb)])
    return out


def dbusmenu_label(label: str) -> str:
    """dbusmenu reads "_" as the access-key marker: "sd_xl" would show as "sdxl"; "__" is one underscore."""
    return label.replace("_", "__")


class _Menu(ServiceInterface):
    """com.canonical.dbusmenu over the entries `build()` returns (the tray's current menu)."""

    def __init__(self, build: Callable[[], Awaitable[tuple[Entry, ...]]],
                 activate: Callable[[Entry], None]):
        super().__init__("com.canonical.dbusmenu")
        self._build, self._activate = build, activate
        self._ids: dict[str, int] = {}        # entry key -> id, never reused for another key
        self._by_id: dict[int, Entry] = {}
        self._layout: list = [0, {}, []]
        self._revision = 0

    async def refresh(self) -> bool:
        """Rebuild from the Service; True (and LayoutUpdated) when the menu changed."""
        entries = await self._build()
        by_id: dict[int, Entry] = {}
        layout = [0, {"children-display": Variant("s", "submenu")}, [self._node(e, by_id) for e in entries]]
        if _plain(layout) == _plain(self._layout):
            return False
        self._layout, self._by_id = layout, by_id
        self._revision += 1
        self.LayoutUpdated(self._revision, 0)
        return True

    def _node(self, e: Entry, by_id: dict[int, Entry]) -> Variant:
        i = self._ids.setdefault(e.key, len(self._ids) + 1)
        by_id[i] = e
        if e.separator:
            props = {"type": Variant("s", "separator")}
        else:
            props = {"label": Variant("s", dbusmenu_label(e.label)), "enabled": Variant("b", e.enabled)}
            if e.checked is not None:
                props["toggle-type"] = Variant("s", "checkmark")
                props["toggle-state"] = Variant("i", int(e.checked))
            if e.children:
                props["children-display"] = Variant("s", "submenu")
        return Variant("(ia{sv}av)", [i, props, [self._node(c, by_id) for c in e.children]])

    def _find(self, node: list, i: int) -> list | None:
        if node[0] == i:
            return node
        for child in node[2]:
            if hit := self._find(child.value, i):
                return hit
        return None

    @staticmethod
    def _cut(node: list, depth: int) -> list:
        """The node with `depth` levels of children (-1: all), as GetLayout's recursionDepth asks."""
        if depth == 0:
            return [node[0], node[1], []]
        return [node[0], node[1], [Variant("(ia{sv}av)", _Menu._cut(c.value, depth - 1)) for c in node[2]]]

    @method()
    def GetLayout(self, parentId: "i", recursionDepth: "i", propertyNames: "as") -> "u(ia{sv}av)":
        node = self._find(self._layout, parentId) or [parentId, {}, []]
        return [self._revision, self._cut(node, recursionDepth)]

    @method()
    def GetGroupProperties(self, ids: "ai", propertyNames: "as") -> "a(ia{sv})":
        wanted = ids or [0, *self._by_id]
        return [[i, n[1]] for i in wanted if (n := self._find(self._layout, i)) is not None]

    @method()
    def GetProperty(self, id: "i", name: "s") -> "v":
        node = self._find(self._layout, id)
        return (node[1] if node else {}).get(name, Variant("s", ""))

    @method()
    def Event(self, id: "i", eventId: "s", data: "v", timestamp: "u"):
        self._event(id, eventId)

    @method()
    def EventGroup(self, events: "a(isvu)") -> "ai":
        return [i for i, event_id, _data, _ts in events if not self._event(i, event_id)]

    def _event(self, i: int, event_id: str) -> bool:
        entry = self._by_id.get(i)
        if entry is None:
            return False
        if event_id == "clicked":
            self._activate(entry)
        return True

    @method()
    async def AboutToShow(self, id: "i") -> "b":
        return await self.refresh()

    @method()
    async def AboutToShowGroup(self, ids: "ai") -> "aiai":
        return [[0] if await self.refresh() else [], []]

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> "u":
        return 3

    @dbus_property(access=PropertyAccess.READ)
    def TextDirection(self) -> "s":
        return "ltr"

    @dbus_property(access=PropertyAccess.READ)
    def Status(self) -> "s":
        return "normal"

    @dbus_property(access=PropertyAccess.READ)
    def IconThemePath(self) -> "as":
        return []

    @signal()
    def LayoutUpdated(self, revision, parent) -> "ui":
        return [revision, parent]

    @signal()
    def ItemsPropertiesUpdated(self, updated, removed) -> "a(ia{sv})a(ias)":
        return [updated, removed]


def _plain(node: list) -> Any:
    """A layout without Variants, to compare two builds."""
    return [node[0], {k: v.value for k, v in node[1].items()}, [_plain(c.value) for c in node[2]]]


class _Item(ServiceInterface):
    def __init__(self, pixmaps: list, tooltip: Callable[[], str], on_activate: Callable[[], None]):
        super().__init__("org.kde.StatusNotifierItem")
        self._pixmaps, self._tooltip, self._activate = pixmaps, tooltip, on_activate

    @dbus_property(access=PropertyAccess.READ)
    def Category(self) -> "s":
        return "ApplicationStatus"

    @dbus_property(access=PropertyAccess.READ)
    def Id(self) -> "s":
        return "hearth"

    @dbus_property(access=PropertyAccess.READ)
    def Title(self) -> "s":
        return "Hearth"

    @dbus_property(access=PropertyAccess.READ)
    def Status(self) -> "s":
        return "Active"

    @dbus_property(access=PropertyAccess.READ)
    def WindowId(self) -> "i":
        return 0

    @dbus_property(access=PropertyAccess.READ)
    def IconName(self) -> "s":
        return ""  # no theme icon: the pixmap is drawn here, so the pack ships no icon file for it

    @dbus_property(access=PropertyAccess.READ)
    def IconThemePath(self) -> "s":
        return ""

    @dbus_property(access=PropertyAccess.READ)
    def IconPixmap(self) -> "a(iiay)":
        return self._pixmaps

    @dbus_property(access=PropertyAccess.READ)
    def OverlayIconName(self) -> "s":
        return ""

    @dbus_property(access=PropertyAccess.READ)
    def AttentionIconName(self) -> "s":
        return ""

    @dbus_property(access=PropertyAccess.READ)
    def ToolTip(self) -> "(sa(iiay)ss)":
        return ["", [], "Hearth", self._tooltip()]

    @dbus_property(access=PropertyAccess.READ)
    def ItemIsMenu(self) -> "b":
        return False

    @dbus_property(access=PropertyAccess.READ)
    def Menu(self) -> "o":
        return MENU_PATH

    @method()
    def Activate(self, x: "i", y: "i"):
        self._activate()

    @method()
    def SecondaryActivate(self, x: "i", y: "i"):
        pass

    @method()
    def ContextMenu(self, x: "i", y: "i"):
        pass  # hosts draw the dbusmenu themselves

    @method()
    def Scroll(self, delta: "i", orientation: "s"):
        pass

    @signal()
    def NewToolTip(self) -> "":
        return None


class SniTray:
    """Our item on one session bus. `start()` says whether a host shows it; the item stays exported and
    registers again whenever a StatusNotifierWatcher appears, so a tray that starts later still gets it."""

    def __init__(self, address: str, image, tooltip: Callable[[], str],
                 build: Callable[[], Awaitable[tuple[Entry, ...]]], activate: Callable[[Entry], None],
                 on_activate: Callable[[], None]):
        self._address = address
        self._menu = _Menu(build, activate)
        self._item = _Item(argb_pixmaps(image), tooltip, on_activate)
        self._name = f"org.kde.StatusNotifierItem-{os.getpid()}-1"
        self._bus: MessageBus | None = None
        self._tasks: set[asyncio.Future] = set()  # late registrations in flight: asyncio keeps tasks weakly

    async def start(self) -> tuple[bool, str]:
        """Connect, export, register with the watcher if one runs. (shown, why) for the log line."""
        self._bus = await asyncio.wait_for(MessageBus(bus_address=self._address).connect(), 5)
        bus = self._bus
        await self._menu.refresh()
        bus.export(ITEM_PATH, self._item)
        bus.export(MENU_PATH, self._menu)
        await bus.request_name(self._name)
        bus.add_message_handler(self._on_message)
        await self._call(DBUS, "/org/freedesktop/DBus", DBUS, "AddMatch", "s",
                         [f"type='signal',sender='{DBUS}',interface='{DBUS}',member='NameOwnerChanged',"
                          f"arg0='{WATCHER}'"])
        if not (await self._call(DBUS, "/org/freedesktop/DBus", DBUS, "NameHasOwner", "s", [WATCHER]))[0]:
            return False, "no StatusNotifierWatcher on the session bus"
        await self._register()
        host = (await self._call(WATCHER, WATCHER_PATH, "org.freedesktop.DBus.Properties", "Get", "ss",
                                 [WATCHER, "IsStatusNotifierHostRegistered"]))[0].value
        return (True, "registered with the StatusNotifierWatcher") if host else \
            (False, "the StatusNotifierWatcher on the session bus has no host to show icons")

    async def _register(self) -> None:
        await self._call(WATCHER, WATCHER_PATH, WATCHER, "RegisterStatusNotifierItem", "s", [self._name])

    def _on_message(self, msg: Message) -> None:
        if (msg.message_type == MessageType.SIGNAL and msg.member == "NameOwnerChanged"
                and msg.body[0] == WATCHER and msg.body[2]):
            task = asyncio.ensure_future(self._register_late())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _register_late(self) -> None:
        try:
            await self._register()
            log.info("tray: a StatusNotifierWatcher appeared on the session bus; the icon is registered with it")
        except Exception as e:  # noqa: BLE001 - a watcher that vanished again: the next one gets us
            log.info("tray: registering with the new StatusNotifierWatcher failed (%s)", e)

    async def _call(self, dest: str, path: str, interface: str, member: str, signature: str,
                    body: list) -> list:
        if self._bus is None:  # closed since the call was scheduled
            raise RuntimeError(f"{member}: the tray is no longer on the session bus")
        reply = await self._bus.call(Message(destination=dest, path=path, interface=interface, member=member,
                                             signature=signature, body=body))
        if reply.message_type == MessageType.ERROR:
            raise RuntimeError(f"{member}: {reply.error_name}: {reply.body[0] if reply.body else ''}")
        return reply.body

    async def changed(self) -> None:
        """The cache changed: a new menu (if it differs) and tooltip for hosts that keep them open."""
        if self._bus is not None and self._bus.connected:
            await self._menu.refresh()
            self._item.NewToolTip()

    async def close(self) -> None:
        """Leave the bus cleanly: give up the name first (the watcher drops the item, so hosts stop asking
        it), then close and wait until dbus-fast has let go of the socket, all on the loop: a socket closed
        with the loop while a host's call was being answered logged a write to a dead descriptor. At most
        1 s in all, so a bus that stopped answering cannot slow the daemon's stop much."""
        bus, self._bus = self._bus, None
        if bus is None:
            return
        try:
            if bus.connected:
                await asyncio.wait_for(bus.release_name(self._name), 0.5)
        except Exception as e:  # noqa: BLE001 - a bus already gone: nothing to give up
            log.debug("tray: releasing %s: %s", self._name, e)
        bus.disconnect()
        try:
            await asyncio.wait_for(bus.wait_for_disconnect(), 0.5)
        except Exception as e:  # noqa: BLE001 - the socket closed with an error: it is closed all the same
            log.debug("tray: disconnecting: %s", e)
