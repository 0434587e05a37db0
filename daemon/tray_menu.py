"""The tray's menu: one model built from the Service, drawn by both backends (dbusmenu and pystray).

Entries are built on the daemon's loop (they read the Service) and are immutable, so pystray's thread may
read the last built menu while the loop builds the next. Actions run on the loop (`activate`). Every entry
has a stable `key` naming what it does ("evict:/models/a.safetensors"): the dbusmenu ids follow the keys,
so a menu rebuilt between the host's GetLayout and its click never lets an id reach another model.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..core.errors import HearthError
from ..core.model_files import is_cached_kind, walk_once
from ..core.sizes import format_size
from .service import Service

log = logging.getLogger("hearth.tray")

RECENT = 20          # models offered by Preload
SCAN_LIMIT = 5000    # files looked at per menu build: a huge model tree must not stall the menu

Action = Callable[[], "Awaitable[Any] | Any"]


@dataclass(frozen=True)
class Entry:
    label: str
    key: str
    action: Action | None = None
    children: tuple[Entry, ...] = ()
    enabled: bool = True
    checked: bool | None = None  # None: not a toggle
    default: bool = False        # the action of a left click where the host has no menu (XEmbed)
    separator: bool = False


def separator(n: int) -> Entry:
    return Entry("", f"-{n}", separator=True)


def recent_models(roots: list[str], exclude: set[str], limit: int = RECENT) -> list[tuple[str, int]]:
    """(real path, size) of the newest model files under the allowed folders, newest first.

    Blocking (walks folders): run it off the loop. Symlinked folders are followed (ComfyUI users link model
    folders in), each real folder once.
    """
    found: dict[str, tuple[float, int]] = {}
    seen_dirs: set[str] = set()
    scanned = 0
    for root in roots:
        for dirpath, _dirs, files in walk_once(root, seen_dirs):
            for name in files:
                scanned += 1
                if not is_cached_kind(name):
                    continue
                real = os.path.realpath(os.path.join(dirpath, name))
                if real in exclude or real in found:
                    continue
                try:
                    st = os.stat(real)
                except OSError:
                    continue
                found[real] = (st.st_mtime, st.st_size)
            if scanned > SCAN_LIMIT:
                break
    newest = sorted(found.items(), key=lambda kv: kv[1][0], reverse=True)[:limit]
    return [(path, size) for path, (_mtime, size) in newest]


def short_name(path: str, roots: list[str]) -> str:
    """The path below the allowed folder holding it (checkpoints/a.safetensors), else the file's name."""
    for root in sorted(roots, key=len, reverse=True):
        if path.startswith(root.rstrip(os.sep) + os.sep):
            return path[len(root.rstrip(os.sep)) + 1:]
    return os.path.basename(path)


def summary(service: Service) -> str:
    """One line: what the cache holds, and what fills now."""
    parts = [f"{format_size(service.used())} of {format_size(service.budget())} cached"]
    filling = sum(1 for e in service.entries.values() if e.state == "filling")
    waiting = len(service.fills.pending()) - filling
    if filling:
        parts.append(f"{filling} filling")
    if waiting > 0:
        parts.append(f"{waiting} waiting")
    return ", ".join(parts)


def tooltip(service: Service) -> str:
    return f"{summary(service)}\n{service.warm.status()['summary']}"


def build(service: Service, recent: list[tuple[str, int]], open_panel: Action, quit: Action) -> tuple[Entry, ...]:
    """The menu for the Service's state now. Loop thread (it reads the Service)."""
    roots = service.roots()
    cached = sorted(service.entries.values(), key=lambda e: -e.last_use)
    pinned = set(service.settings["pinned"])

    def name(path: str, size: int | None) -> str:
        return short_name(path, roots) + ("" if size is None else f" ({format_size(size)})")

    preload = tuple(Entry(name(p, size), f"preload:{p}", _call(service.preload, [p])) for p, size in recent)
    evict = tuple(Entry(name(e.source.path, e.size) + (", filling" if e.state == "filling" else ""),
                        f"evict:{e.key}", _call(service.evict, None, False, e.key),
                        enabled=e.state == "ready")
                  for e in cached)
    if evict:
        evict += (separator(0), Entry("All", "evict:*", _call(service.evict, None, True)))
    pin_paths: dict[str, int | None] = {e.source.path: e.size for e in cached}
    for p in sorted(pinned - set(pin_paths)):  # pinned but not cached now (file gone, or a fill failed)
        pin_paths[p] = None
    pin = tuple(Entry(name(p, size), f"pin:{p}", _call(service.pin, p, p not in pinned), checked=p in pinned)
                for p, size in pin_paths.items())
    warm = service.warm.status()

    def submenu(label: str, key: str, children: tuple[Entry, ...], empty: str) -> Entry:
        return Entry(label, key, children=children or (Entry(empty, f"{key}:empty", enabled=False),))

    # the warm set's line while it has work: refilling, or paused with models left
    busy = warm["state"] in ("refilling", "paused")
    warm_line = (Entry(warm["summary"], "warm", enabled=False),) if busy else ()
    return (
        Entry(summary(service), "status", enabled=False),
        *warm_line,
        Entry("Open panel", "open", open_panel, default=True),
        separator(1),
        submenu("Preload", "preload", preload, "(nothing else in the model folders)"),
        submenu("Evict", "evict", evict, "(nothing cached)"),
        submenu("Pin", "pin", pin, "(nothing cached)"),
        separator(2),
        # Pause is the warm set's own (setting `warm_set`: on, paused, off), so the panel, `hearth config`
        # and the tray show one state; explicit preloads are the user's and are not held.
        Entry("Pause the warm-set refill" + (" (the warm set is off)" if warm["mode"] == "off" else ""),
              "pause", _call(service.config, {"warm_set": "on" if warm["mode"] == "paused" else "paused"}),
              enabled=warm["mode"] != "off", checked=warm["mode"] == "paused"),
        separator(3),
        Entry("Quit Hearth", "quit", quit),
    )


def _call(fn: Callable[..., Any], *args: Any) -> Action:
    return lambda: fn(*args)


async def activate(entry: Entry) -> None:
    """Run an entry's action on the loop. A refusal (a model gone meanwhile) is one log line, never a crash."""
    if entry.action is None or not entry.enabled:
        return
    try:
        result = entry.action()
        if inspect.isawaitable(result):
            result = await result
    except HearthError as e:
        log.warning("tray: %s: %s", entry.label, e.message)
        return
    except Exception:  # a menu click must never take the daemon down
        log.exception("tray: %s failed", entry.label)
        return
    if isinstance(result, dict):  # a preload or pin answers with the files it refused, and why
        for refused in result.get("refused", []):
            log.warning("tray: %s: %s", entry.label, refused.get("message"))
