"""The tray on real parts: a real daemon process, a private D-Bus session bus, Xvfb, and real trays.

- SNI: xfce4-panel is at once the StatusNotifierWatcher, an SNI host (it draws our dbusmenu through
  libdbusmenu) and an XEmbed tray. The test plays a second host over the same bus: it reads the item and
  its menu the way a panel does (GetAll, AboutToShow, GetLayout) and clicks entries (Event), and checks
  what each click did to the daemon over its HTTP API. Then real clicks by xdotool go through the panel's
  own menu.
- XEmbed: trayer (a GTK2 XEmbed tray, no D-Bus), the icon docked there, a left click opens the panel; and
  a tray of the test's own (python-xlib) that drops the first dock requests, as a tray starting up can.
- No tray: one log line, no traceback; a panel started later gets the icon. No display: headless.
"Open panel" runs $BROWSER, here a script that writes the URL it was given to a file.
"""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Daemon, make_model

WATCHER = "org.kde.StatusNotifierWatcher"
PANEL_XML = """<?xml version="1.0" encoding="UTF-8"?>
<channel name="xfce4-panel" version="1.0">
  <property name="configver" type="int" value="2"/>
  <property name="panels" type="array">
    <value type="int" value="1"/>
    <property name="panel-1" type="empty">
      <property name="position" type="string" value="p=6;x=0;y=0"/>
      <property name="length" type="uint" value="100"/>
      <property name="position-locked" type="bool" value="true"/>
      <property name="size" type="uint" value="32"/>
      <property name="plugin-ids" type="array"><value type="int" value="1"/></property>
    </property>
  </property>
  <property name="plugins" type="empty">
    <property name="plugin-1" type="string" value="systray"/>
  </property>
</channel>
"""


def need(*programs: str) -> None:
    """Skip, naming the Debian package, where a program the test runs is missing (.ci/run installs them)."""
    package = {"Xvfb": "xvfb", "dbus-daemon": "dbus"}
    for p in programs:
        if shutil.which(p) is None:
            pytest.skip(f"{p} is not installed (apt-get install {package.get(p, p)}; .ci/run installs it)")


def need_dbus_fast() -> None:
    pytest.importorskip("dbus_fast", reason="dbus-fast is not installed (pip install -r requirements.txt)")


def wait(cond, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


class Procs:
    """Processes a test starts, stopped in reverse order at its end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], **kw) -> subprocess.Popen:
        proc = subprocess.Popen(argv, **kw)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


@pytest.fixture
def procs():
    p = Procs()
    yield p
    p.close()


def start_xvfb(procs: Procs) -> str:
    need("Xvfb")
    # -displayfd: Xvfb picks a free display and writes its number once it accepts connections
    x = procs.start(["Xvfb", "-displayfd", "1", "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return f":{x.stdout.readline().strip()}"


def start_bus(procs: Procs, root: Path) -> str:
    """A private session bus, listening where systemd puts the user's: $XDG_RUNTIME_DIR/bus. It runs with
    the test's XDG folders: the services it starts (xfconfd, for the panel's settings) read and write there."""
    need("dbus-daemon")
    env = desktop_env(root, None, None)
    b = procs.start(["dbus-daemon", "--session", "--nofork", "--print-address=1",
                     f"--address=unix:path={env['XDG_RUNTIME_DIR']}/bus"], env=env, stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL, text=True)
    return b.stdout.readline().strip()


@pytest.fixture
def display(procs) -> str:
    return start_xvfb(procs)


@pytest.fixture
def bus(procs, tmp_path) -> str:
    return start_bus(procs, tmp_path)


@pytest.fixture(scope="module")
def xfce(tmp_path_factory):
    """One XFCE session for the SNI tests (the panel takes over a second to start): (env, bus address)."""
    need_dbus_fast()
    root = tmp_path_factory.mktemp("xfce")
    p = Procs()
    try:
        display = start_xvfb(p)
        address = start_bus(p, root)
        env = desktop_env(root, display, address)
        start_panel(p, env)
        wait_for_watcher(address)
        yield env, address
    finally:
        p.close()


def desktop_env(tmp_path: Path, display: str | None, bus: str | None) -> dict[str, str]:
    """The session's environment; XDG folders of the test's own, so no real desktop config is read."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR")}
    for name in ("config", "cache", "data"):
        (tmp_path / "xdg" / name).mkdir(parents=True, exist_ok=True)
        env[f"XDG_{name.upper()}_HOME"] = str(tmp_path / "xdg" / name)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env["XDG_RUNTIME_DIR"] = str(runtime)
    if display:
        env["DISPLAY"] = display
    if bus:
        env["DBUS_SESSION_BUS_ADDRESS"] = bus
    return env


def start_panel(procs: Procs, env: dict[str, str]) -> subprocess.Popen:
    need("xfce4-panel")
    conf = Path(env["XDG_CONFIG_HOME"]) / "xfce4" / "xfconf" / "xfce-perchannel-xml"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "xfce4-panel.xml").write_text(PANEL_XML)  # without it the panel asks first-run questions
    return procs.start(["xfce4-panel", "--disable-wm-check"], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)


class TrayDaemon(Daemon):
    """`hearth daemon` without --headless: it decides about the tray by itself."""

    ARGS = ("daemon",)

    def __init__(self, root: Path, env: dict[str, str], shm: Path | None = None):
        root.mkdir(parents=True, exist_ok=True)
        browser = root / "browser.sh"
        self.opened = root / "opened.txt"
        browser.write_text(f'#!/bin/sh\necho "$1" >> {self.opened}\n')
        browser.chmod(0o755)
        super().__init__(root, shm=shm, env={**env, "BROWSER": str(browser)})
        # only what desktop_env chose: Daemon copies os.environ, which may have the real session's
        for k in ("DISPLAY", "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS"):
            if k not in env:
                self.env.pop(k, None)

    def urls(self) -> list[str]:
        return self.opened.read_text().split() if self.opened.exists() else []

    def tray_lines(self) -> list[str]:
        return [line for line in self.log().splitlines() if " hearth.tray " in line]


@pytest.fixture
def daemons():
    made: list[TrayDaemon] = []

    def make(root: Path, env: dict[str, str], shm: Path | None = None) -> TrayDaemon:
        d = TrayDaemon(root, env, shm)
        made.append(d)
        return d

    yield make
    for d in made:
        d.cleanup()


# ---- a host's view of the item, over the real bus --------------------------------------------------

class Host:
    """What a tray host does on the bus, done by the test: find our item, read it, read its menu, click."""

    def __init__(self, address: str):
        self.address = address

    async def __aenter__(self) -> Host:
        from dbus_fast.aio import MessageBus

        self.bus = await MessageBus(bus_address=self.address).connect()
        return self

    async def __aexit__(self, *exc) -> None:
        self.bus.disconnect()

    async def call(self, dest: str, path: str, iface: str, member: str, sig: str = "", body=()):
        from dbus_fast import Message, MessageType

        reply = await self.bus.call(Message(destination=dest, path=path, interface=iface, member=member,
                                            signature=sig, body=list(body)))
        assert reply.message_type != MessageType.ERROR, (member, reply.error_name, reply.body)
        return reply.body

    async def has_owner(self, name: str) -> bool:
        return (await self.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                "NameHasOwner", "s", [name]))[0]

    async def watcher(self, prop: str):
        return (await self.call(WATCHER, "/StatusNotifierWatcher", "org.freedesktop.DBus.Properties", "Get",
                                "ss", [WATCHER, prop]))[0].value

    async def wait(self, cond, what: str, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while not (value := await cond()):
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)
        return value

    async def item(self, timeout: float = 10.0) -> tuple[str, str]:
        """(bus name, object path) of the one item the watcher has. Watchers store "name/path" (xfce4-panel,
        swaybar) or a bare name (Debian's status-notifier-watcher)."""
        await self.wait(lambda: self.has_owner(WATCHER), "the StatusNotifierWatcher", timeout)

        async def one() -> list[str]:  # the item of a daemon that just quit may still be listed
            items = await self.watcher("RegisteredStatusNotifierItems")
            return items if len(items) == 1 else []

        items = await self.wait(one, "one registered item", timeout)
        name, _, path = items[0].partition("/")
        return name, "/" + path if path else "/StatusNotifierItem"

    async def properties(self, name: str, path: str) -> dict:
        props = await self.call(name, path, "org.freedesktop.DBus.Properties", "GetAll", "s",
                                ["org.kde.StatusNotifierItem"])
        return {k: v.value for k, v in props[0].items()}

    async def menu(self, name: str) -> dict[str, tuple[int, dict]]:
        """The menu as a host opening it sees it: {"Evict/a.safetensors (...)": (id, properties)}."""
        await self.call(name, "/MenuBar", "com.canonical.dbusmenu", "AboutToShow", "i", [0])
        _rev, layout = await self.call(name, "/MenuBar", "com.canonical.dbusmenu", "GetLayout", "iias",
                                       [0, -1, []])
        out: dict[str, tuple[int, dict]] = {}

        def walk(node, prefix: str) -> None:
            i, props, children = node
            props = {k: v.value for k, v in props.items()}
            label = props.get("label", f"<{props.get('type', '')}{i}>")
            path = f"{prefix}/{label}" if prefix else label
            if i:
                out[path] = (i, props)
            for c in children:
                walk(c.value, path if i else "")

        walk(layout, "")
        return out

    async def click(self, name: str, *labels: str, menu: dict | None = None) -> None:
        """Click the entry under the labels given (each the start of a label: sizes follow names), in the
        menu as it is now, or in `menu` as the host read it earlier."""
        from dbus_fast import Variant

        menu = menu or await self.menu(name)
        found = [i for path, (i, _p) in menu.items()
                 if len(parts := path.split("/")) == len(labels)
                 and all(p.startswith(label) for p, label in zip(parts, labels, strict=True))]
        assert len(found) == 1, (labels, list(menu))
        await self.call(name, "/MenuBar", "com.canonical.dbusmenu", "Event", "isvu",
                        [found[0], "clicked", Variant("i", 0), int(time.time())])


def wait_for_watcher(address: str) -> None:
    async def check() -> None:
        async with Host(address) as host:
            await host.wait(lambda: host.has_owner(WATCHER), "the panel's StatusNotifierWatcher")

    asyncio.run(check())


def children(menu: dict, parent: str) -> list[str]:
    return [p.split("/", 1)[1] for p in menu if p.startswith(parent + "/")]


def segment(d: Daemon, model: Path) -> dict | None:
    return d.segment(model)


# ---- SNI ------------------------------------------------------------------------------------------

def test_sni_icon_and_menu_drive_the_daemon(tmp_path, xfce, daemons):
    env, bus = xfce
    d = daemons(tmp_path / "d", env)
    a = make_model(d.models / "a.safetensors", seed=1)
    make_model(d.models / "sd_xl_b.safetensors", seed=2)
    d.start()

    async def scenario() -> None:
        async with Host(bus) as host:
            name, path = await host.item()
            assert await host.watcher("IsStatusNotifierHostRegistered")  # the panel shows it
            props = await host.properties(name, path)
            assert (props["Id"], props["Title"], props["Menu"], props["ItemIsMenu"]) == \
                ("hearth", "Hearth", "/MenuBar", False)
            pixmaps = {w: data for w, h, data in props["IconPixmap"]}
            assert sorted(pixmaps) == [22, 32, 64]
            centre = pixmaps[64][4 * (64 * 40 + 32):][:4]  # the ember's yellow (255, 210, 80), opaque
            assert tuple(centre) == (255, 255, 210, 80), "IconPixmap must be ARGB, alpha first"
            assert tuple(pixmaps[64][:4])[0] == 0  # a transparent corner
            assert "cached" in props["ToolTip"][3]

            menu = await host.menu(name)
            top = [p for p in menu if "/" not in p]
            assert [p for p in top if not p.startswith("<")] == [
                top[0], "Open panel", "Preload", "Evict", "Pin", "Pause the warm-set refill", "Quit Hearth"]
            assert top[0].startswith("0 B of ") and menu[top[0]][1]["enabled"] is False
            assert sum(p["type"] == "separator" for _i, p in menu.values() if "type" in p) == 3
            # dbusmenu reads "_" as a mnemonic: a model's underscores are doubled to show as they are
            preload = sorted(children(menu, "Preload"))
            assert [p.split(" (")[0] for p in preload] == ["a.safetensors", "sd__xl__b.safetensors"]

            await host.click(name, "Preload", "a.safetensors")
            wait(lambda: (segment(d, a) or {}).get("state") == "ready", "the preload from the menu")
            menu = await host.menu(name)
            assert [p.split(" (")[0] for p in children(menu, "Preload")] == ["sd__xl__b.safetensors"]
            assert [p.split(" (")[0] for p in children(menu, "Evict")][0] == "a.safetensors"
            assert menu[next(p for p in menu if p.startswith("Pin/a.safetensors"))][1]["toggle-state"] == 0

            await host.click(name, "Pin", "a.safetensors")
            wait(lambda: (segment(d, a) or {}).get("pinned"), "the pin from the menu")
            assert str(a.resolve()) in d.ok("GET", "/v1/config")["pinned"]
            menu = await host.menu(name)
            assert menu[next(p for p in menu if p.startswith("Pin/a.safetensors"))][1]["toggle-state"] == 1

            await host.click(name, "Evict", "a.safetensors")
            wait(lambda: segment(d, a) is None, "the eviction from the menu")
            assert d.ok("GET", "/v1/config")["pinned"] == []  # evicting a pinned model unpins it

            gone = make_model(d.models / "gone.safetensors", seed=3)
            menu = await host.menu(name)
            gone.unlink()  # between the menu's opening and the click: a refusal, said in one line
            await host.click(name, "Preload", "gone.safetensors", menu=menu)
            wait(lambda: any("tray: gone.safetensors" in line for line in d.tray_lines()), "the refusal's line")

            await host.click(name, "Open panel")
            urls = wait(d.urls, "the browser to be started")
            assert urls == [f"http://127.0.0.1:{d.port}/#token={d.token}"]
            await host.call(name, path, "org.kde.StatusNotifierItem", "Activate", "ii", [0, 0])  # left click
            wait(lambda: len(d.urls()) == 2, "Activate to open the panel")

            await host.click(name, "Quit Hearth")

    asyncio.run(scenario())
    assert d.proc.wait(10) == 0
    log = d.log()
    assert "Traceback" not in log and d.token not in log
    assert any("StatusNotifierItem" in line for line in d.tray_lines())


def test_pause_entry_holds_and_resumes_the_warm_set_refill(tmp_path, xfce, daemons):
    """After a "reboot" (segments gone) the warm set refills what was cached; Pause holds it, a second
    click lets it go, and the panel, config and status say the same."""
    env, bus = xfce
    first = Daemon(tmp_path / "d")
    a = make_model(first.models / "a.safetensors", seed=1)
    first.start()
    first.acquire(a)
    assert first.stop() == 0
    for name in os.listdir(first.shm):  # what a reboot does to /dev/shm
        os.unlink(first.shm / name)
    (first.home / "config.json").write_text('{"warm_set": "paused"}')
    d = daemons(tmp_path / "d", env, shm=first.shm)
    d.start()

    async def scenario() -> None:
        async with Host(bus) as host:
            name, _path = await host.item()
            menu = await host.menu(name)
            assert menu["Pause the warm-set refill"][1]["toggle-state"] == 1
            assert any(p.startswith("Warm set: paused, 1 models left") for p in menu if "/" not in p), list(menu)
            time.sleep(0.5)  # held: not filled (its fill may have begun and waits at its first range)
            assert (segment(d, a) or {}).get("state") != "ready" and d.status()["warm_set"]["state"] == "paused"

            await host.click(name, "Pause the warm-set refill")
            wait(lambda: (segment(d, a) or {}).get("state") == "ready", "the refill once resumed")
            assert d.ok("GET", "/v1/config")["warm_set"] == "on"
            menu = await host.menu(name)
            assert menu["Pause the warm-set refill"][1]["toggle-state"] == 0
            assert not any(p.startswith("Warm set") for p in menu), list(menu)

            await host.click(name, "Pause the warm-set refill")
            wait(lambda: d.ok("GET", "/v1/config")["warm_set"] == "paused", "the pause from the menu")

    asyncio.run(scenario())
    assert "Traceback" not in d.log()


def icon_position(display: str) -> tuple[int, int] | None:
    """Where the panel drew our icon: the centre of the ember's orange in the 32-pixel panel at the top."""
    from PIL import ImageGrab

    img = ImageGrab.grab(xdisplay=display).convert("RGB")
    px = img.load()
    hits = [(x, y) for y in range(32) for x in range(img.width)
            if px[x, y][0] > 200 and 60 < px[x, y][1] < 170 and px[x, y][2] < 80]
    if len(hits) < 10:
        return None
    return sum(x for x, _ in hits) // len(hits), sum(y for _, y in hits) // len(hits)


def menu_shown(display: str, x: int) -> bool:
    """A menu just below the panel, under the icon: Xvfb's root is black, a GTK menu is not."""
    from PIL import ImageGrab

    return ImageGrab.grab(xdisplay=display, bbox=(x, 40, x + 1, 41)).convert("RGB").getpixel((0, 0)) != (0, 0, 0)


def xdotool(env: dict, *args) -> None:
    subprocess.run(["xdotool", *map(str, args)], env=env, check=True, timeout=10)


def test_clicks_through_the_panels_own_menu_reach_the_daemon(tmp_path, xfce, daemons):
    """xdotool on xfce4-panel: left click opens the panel; the menu's entries, drawn by the panel from our
    dbusmenu, run when chosen with the keyboard."""
    need("xdotool")
    env, bus = xfce
    display = env["DISPLAY"]
    d = daemons(tmp_path / "d", env)
    d.start()
    asyncio.run(_registered(bus))
    x, y = wait(lambda: icon_position(display), "the panel to draw the icon")
    xdotool(env, "mousemove", x, y, "click", 1)
    wait(lambda: len(d.urls()) == 1, "a left click to open the panel")
    for keys, what in ((["Down", "Return"], "Open panel"), (["Up", "Return"], "Quit Hearth")):
        xdotool(env, "mousemove", x, y, "click", 3)
        wait(lambda: menu_shown(display, x), "the panel to show our menu")
        for key in keys:  # Down: the first entry that can be chosen (the status line cannot); Up: the last
            xdotool(env, "key", key)
            time.sleep(0.1)
        wait(lambda: not menu_shown(display, x), f"the menu to close after {what}")
        if what == "Open panel":
            wait(lambda: len(d.urls()) == 2, "Open panel from the panel's menu")
    assert d.proc.wait(10) == 0, "Quit from the panel's menu did not stop the daemon"
    assert d.urls() == [f"http://127.0.0.1:{d.port}/#token={d.token}"] * 2
    assert "Traceback" not in d.log()


async def _registered(address: str) -> None:
    async with Host(address) as host:
        await host.item()


# ---- XEmbed ---------------------------------------------------------------------------------------

def hearth_window(display: str):
    """pystray's icon window (named "Hearth: ..."): (embedded, mapped, x, y, width, height) or None."""
    from Xlib import X
    from Xlib.display import Display
    from Xlib.error import BadWindow

    d = Display(display)
    try:
        root = d.screen().root

        def walk(w):
            for c in w.query_tree().children:
                yield c
                yield from walk(c)

        try:
            for w in walk(root):
                if (w.get_wm_name() or "").startswith("Hearth"):
                    g, pos = w.get_geometry(), w.translate_coords(root, 0, 0)
                    return (w.query_tree().parent != root, w.get_attributes().map_state == X.IsViewable,
                            -pos.x, -pos.y, g.width, g.height)
        except BadWindow:  # a window of the tray's went away while we walked: look again
            return None
        return None
    finally:
        d.close()


def settled(display: str) -> tuple[int, int, int, int] | None:
    """The icon's (x, y, width, height) once it is docked, shown, and unmoved for a quarter second."""
    first = hearth_window(display)
    if first is None or first[:2] != (True, True):
        return None
    time.sleep(0.25)
    return first[2:] if hearth_window(display) == first else None


def tray_owner(display: str) -> bool:
    from Xlib import X
    from Xlib.display import Display

    d = Display(display)
    try:
        return d.get_selection_owner(d.intern_atom(f"_NET_SYSTEM_TRAY_S{d.get_default_screen()}")) != X.NONE
    finally:
        d.close()


def test_xembed_icon_docks_in_trayer_and_a_left_click_opens_the_panel(tmp_path, procs, display, daemons):
    need("trayer", "xdotool")
    env = desktop_env(tmp_path, display, None)  # no session bus: XEmbed is the only way
    procs.start(["trayer", "--edge", "top", "--align", "left", "--widthtype", "request", "--height", "32"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait(lambda: tray_owner(display), "trayer to own the system-tray selection")
    d = daemons(tmp_path / "d", env)
    d.start()
    wait(lambda: hearth_window(display), "the icon's window")
    # docked, shown, and where it stays: trayer sizes itself (and so moves the icon) after embedding it
    x, y, w, h = wait(lambda: settled(display), "the icon to be docked and shown", 20)
    # pystray's window takes no clicks by itself (issue #151): a click reaches it only through our fix.
    # About one run in fifty on a loaded 2-core machine (CI's), the first click after docking opened
    # nothing, with the pointer on the icon; its cause is not found, and a user would click again: so does
    # the test, once, after 5 s.
    xdotool(env, "mousemove", x + w // 2, y + h // 2, "click", 1)
    try:
        wait(d.urls, "a left click to open the panel", 5)
    except AssertionError:
        xdotool(env, "click", 1)
    try:
        urls = wait(d.urls, "a left click to open the panel")
    except AssertionError as e:  # say where the clicks went
        pointer = subprocess.run(["xdotool", "getmouselocation", "--shell"], env=env, capture_output=True,
                                 text=True).stdout.split()
        raise AssertionError(f"{e}; clicked at {(x, y, w, h)}, the icon now {hearth_window(display)}, the "
                             f"pointer {pointer}; the daemon's log:\n{d.log()}") from None
    assert urls == [f"http://127.0.0.1:{d.port}/#token={d.token}"]
    assert d.stop() == 0
    lines = d.tray_lines()
    assert len(lines) == 1 and f"XEmbed system tray on {display}" in lines[0], lines
    assert "Traceback" not in d.log()


DEAF_TRAY = """
import sys, time
from Xlib import X
from Xlib.display import Display
d = Display(sys.argv[1])
root = d.screen().root
tray = root.create_window(0, 0, 64, 32, 0, X.CopyFromParent)
tray.map()
tray.set_selection_owner(d.intern_atom("_NET_SYSTEM_TRAY_S0"), X.CurrentTime)
opcode = d.intern_atom("_NET_SYSTEM_TRAY_OPCODE")
print("owner", flush=True)
first = None
while True:
    e = d.next_event()
    if e.type == X.ClientMessage and e.client_type == opcode and e.data[1][1] == 0:
        first = first or time.monotonic()
        # deaf for a second after the first request (pystray sends two at once), as a tray still starting
        # up can be; then the next request is answered
        if time.monotonic() - first < 1.0:
            print("dropped", flush=True)
            continue
        print("embedded", flush=True)
        icon = d.create_resource_object("window", e.data[1][2])
        icon.reparent(tray, 0, 0)
        icon.map()
        d.flush()
"""


def line_of(proc: subprocess.Popen, timeout: float = 10.0) -> str:
    """The process's next line of output, within `timeout` (a tray that never hears from us fails here)."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no line in time"
    return proc.stdout.readline().strip()


def test_a_tray_that_drops_the_first_dock_request_still_gets_the_icon(tmp_path, procs, display, daemons):
    env = desktop_env(tmp_path, display, None)
    tray = procs.start([sys.executable, "-c", DEAF_TRAY, display], env=env, stdout=subprocess.PIPE, text=True)
    assert line_of(tray) == "owner"
    d = daemons(tmp_path / "d", env)
    d.start()
    assert line_of(tray) == "dropped"  # pystray's own request(s)
    while (line := line_of(tray)) == "dropped":
        pass
    assert line == "embedded"  # ours, since the window was not embedded
    wait(lambda: (w := hearth_window(display)) and w[:2] == (True, True), "the icon to be embedded")
    time.sleep(2 * 2.0 + 0.5)  # two more checks: an embedded window is not asked for again
    assert d.stop() == 0
    tray.kill()
    assert tray.stdout.read().split() == []
    assert "Traceback" not in d.log()


# ---- no tray, no desktop --------------------------------------------------------------------------

def test_without_a_tray_one_line_says_why_and_a_panel_started_later_shows_the_icon(
        tmp_path, procs, display, bus, daemons):
    need_dbus_fast()
    # The bus only at $XDG_RUNTIME_DIR/bus, as a daemon started by a systemd user unit finds it.
    env = desktop_env(tmp_path, display, None)
    d = daemons(tmp_path / "d", env)
    d.start()
    line, = wait(d.tray_lines, "the tray's line")
    assert " WARNING no system tray: no StatusNotifierWatcher on the session bus; " in line, line
    assert f"no XEmbed system tray on {display}" in line and "AppIndicator" in line
    assert line.endswith(f"the panel is at http://127.0.0.1:{d.port}/"), line
    start_panel(procs, {**env, "DBUS_SESSION_BUS_ADDRESS": bus})

    async def appears() -> None:
        async with Host(bus) as host:
            name, path = await host.item()
            assert (await host.properties(name, path))["Id"] == "hearth"
            assert await host.watcher("IsStatusNotifierHostRegistered")

    asyncio.run(appears())
    wait(lambda: len(d.tray_lines()) == 2, "the line saying the icon is registered")
    assert "StatusNotifierWatcher appeared" in d.tray_lines()[1]
    assert d.stop() == 0
    log = d.log()
    assert "Traceback" not in log and d.token not in log


def test_without_a_desktop_the_daemon_runs_headless_and_says_so_once(tmp_path, daemons):
    d = daemons(tmp_path / "d", desktop_env(tmp_path, None, None))
    d.start()
    wait(d.tray_lines, "the tray's line")
    assert d.status()["version"]
    assert d.stop() == 0
    lines = d.tray_lines()
    assert len(lines) == 1, lines
    assert "no desktop session" in lines[0] and "running headless" in lines[0], lines
    assert lines[0].endswith(f"the panel is at http://127.0.0.1:{d.port}/")
    assert "Traceback" not in d.log() and d.token not in d.log()
