"""The warm set: after a reboot, the models used most recently are back in the cache before anyone asks.

When the daemon starts, the models whose segments are gone (a reboot or a cleared /dev/shm; the index
remembers them with their last use and hits, index.py) are refilled: pinned models first of all, then the
most recently used first, within `warm_set_size` (default: the budget; models re-adopted at start count
against it too). A model that does not fit is left out, and a smaller, older one may still come back.

- One refill at a time, at WARM priority (fills.py): idle I/O class, paused while any fill a load waits on
  runs, never evicting a model used after the one it brings back; a load that wants a model being refilled
  raises that fill to its own priority (single flight).
- A source file that vanished or changed since it was cached is skipped with the reason and forgotten: the
  index vouches for the file it filled from, not for whatever lies at that path now. Files are identified
  by that record (device, inode, size, times) instead of the allowed folders, which at boot lack the ones
  ComfyUI processes register while they run; a pinned model without a record is checked as any request.
- `warm_set` setting: `on`; `paused`: the refill under way holds at its next range (paused at start, the
  first one holds before its first range: it keeps its place, and resumes at once); `off`: only pinned
  models are refilled (pinning asks for that); the others stay remembered and are refilled when it is
  turned on again, at once or at the next start.

Progress is in the status document's `warm_set` (its `summary` is one line for the tray and `hearth
status`). Loop thread only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..core.errors import HearthError
from ..core.model_files import is_cached_kind
from ..core.sizes import format_size, parse_size
from . import segments
from .budget import ram_total
from .entries import Entries
from .fills import Aborted, Fills
from .index import Index, Remembered
from .segments import SourceId
from .settings import Settings
from .slots import WARM

log = logging.getLogger("hearth.warmset")

MAX_LISTED = 100  # done and skipped models kept for the status document


@dataclass
class Item:
    """A model the refill means to bring back."""

    path: str
    source: SourceId | None  # as the index recorded it; None for a pinned model it never knew
    pinned: bool
    last_use: float | None = None
    hits: int = 0

    @property
    def size(self) -> int:
        return self.source.size if self.source else 0


class Skip(Exception):
    """Why a model is not refilled."""


class WarmSet:
    def __init__(self, settings: Settings, entries: Entries, index: Index, fills: Fills,
                 resolve: Callable[[str], SourceId], budget: Callable[[], int]):
        self._settings, self._entries, self._index, self._fills = settings, entries, index, fills
        self._resolve, self._budget = resolve, budget
        self.queue: list[Item] = []
        self.current: Item | None = None
        self.done: list[dict] = []
        self.skipped: list[dict] = []
        self._task: asyncio.Task | None = None
        self.started: float | None = None
        self.finished: float | None = None

    # ---- plan and run ---------------------------------------------------------------------------

    def size(self) -> int:
        """The warm set's size in bytes: the setting, never above the budget."""
        setting = self._settings["warm_set_size"]
        budget = self._budget()
        if setting in (None, "", "auto"):
            return budget
        return min(parse_size(setting, total=ram_total()), budget)

    def plan(self) -> None:
        """Order what to refill: pinned first, then most recent first, within the warm set's size."""
        pinned = list(self._settings["pinned"])
        ready = {e.source.path: e for e in self._entries.values() if e.state == "ready"}
        remembered = sorted(self._index.remembered.values(), key=lambda r: (-r.last_use, -r.hits))
        by_path: dict[str, Remembered] = {}
        for r in remembered:
            by_path.setdefault(r.source.path, r)  # the most recent record of a path
        items = [Item(p, by_path[p].source if p in by_path else None, True,
                      by_path[p].last_use if p in by_path else None, by_path[p].hits if p in by_path else 0)
                 for p in pinned if p not in ready]
        items += [Item(r.source.path, r.source, False, r.last_use, r.hits)
                  for r in by_path.values() if r.source.path not in pinned and r.source.path not in ready]
        limit = self.size()
        # What is in the cache already counts against the size, in the same order: pinned, then recent.
        used = sum(e.size for e in ready.values())
        self.queue = []
        for item in sorted(items, key=lambda i: (not i.pinned, -(i.last_use or 0.0))):
            if item.pinned or used + item.size <= limit:
                used += item.size
                self.queue.append(item)
            else:
                self._skip(item, f"outside the warm set ({format_size(item.size)}; "
                                 f"{format_size(limit)} in all, set by warm_set_size)")
        self._index.save(self._entries)

    def start(self) -> None:
        """At the daemon's start: apply the setting, plan, and begin the refill."""
        self._apply_mode()
        self._begin()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def mode_changed(self) -> None:
        """The `warm_set` setting changed: pause or release the refill, stop the unpinned when off, and
        begin again what is still remembered when it turns on."""
        self._apply_mode()
        if self._settings["warm_set"] == "on":
            self._begin()

    def _running(self) -> bool:
        return self._task is not None and not self._task.done()

    def _apply_mode(self) -> None:
        mode = self._settings["warm_set"]
        self._fills.pause_warm(mode == "paused")
        item = self.current
        if mode == "off" and item is not None and not item.pinned and item.source is not None:
            f = self._fills.get(item.source.key)
            if f is not None and f.priority == WARM:
                self._fills.abort(f, "the warm set was turned off")

    def _begin(self) -> None:
        if self._running():
            return
        self.plan()
        if not self.queue:
            return
        self.started, self.finished = time.time(), None
        log.info("warm set: refilling %d models (%s)", len(self.queue),
                 format_size(sum(i.size for i in self.queue)))
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            while self.queue:
                item = self.queue.pop(0)
                if self._settings["warm_set"] == "off" and not item.pinned:
                    continue  # stays remembered for when it is turned on again
                self.current = item
                try:
                    await self._refill(item)
                finally:
                    self.current = None
        finally:
            self.finished = time.time()
            if not self.queue:
                log.info("warm set: %d refilled, %d skipped", len(self.done), len(self.skipped))

    async def _refill(self, item: Item) -> None:
        try:
            source = self._identify(item)
        except Skip as e:
            self._skip(item, str(e))
            return
        item.source = source
        entry = self._entries.get(source.key)
        if entry is not None and entry.state == "ready":
            self._done(item, "in the cache already")
            return
        self._entries.drop_other_versions(source)
        t0 = time.perf_counter()
        try:
            await asyncio.shield(self._fills.start(source, WARM, item.last_use, item.hits))
        except Aborted as e:
            if self._settings["warm_set"] == "off" and not item.pinned:
                return  # stays remembered
            self._skip(item, str(e))
        except HearthError as e:
            self._skip(item, e.message)
        else:
            self._done(item, f"{time.perf_counter() - t0:.1f} s")

    def _identify(self, item: Item) -> SourceId:
        """The source as it is now, when it is the file the index recorded; Skip saying why not."""
        if item.source is None:  # a pinned model the index never knew: the usual check of a request
            try:
                return self._resolve(item.path)
            except HearthError as e:
                raise Skip(e.message) from None
        if not is_cached_kind(item.path):
            raise Skip(f"{item.path}: not a model file Hearth caches")
        try:
            current = segments.identify(item.path, item.path)
        except FileNotFoundError:
            raise Skip(f"{item.path}: the file is gone") from None
        except (HearthError, OSError) as e:
            raise Skip(getattr(e, "message", None) or f"{item.path}: {e}") from None
        if (field := item.source.mismatch(current)) is not None:
            raise Skip(f"{item.path}: the file changed since it was cached ({field})")
        return current

    def _done(self, item: Item, how: str) -> None:
        self.done.append({"path": item.path, "size": item.size, "pinned": item.pinned, "how": how})
        del self.done[:-MAX_LISTED]

    def _skip(self, item: Item, reason: str) -> None:
        log.info("warm set: skipped %s: %s", item.path, reason)
        self.skipped.append({"path": item.path, "size": item.size, "reason": reason})
        del self.skipped[:-MAX_LISTED]
        if item.source is not None:
            self._index.forget(key=item.source.key)
            self._index.save(self._entries)

    def forget(self, path: str | None = None) -> None:
        """The user evicted `path` (None: everything): it is not brought back either."""
        self.queue = [i for i in self.queue if path is not None and i.path != path]

    # ---- progress ----------------------------------------------------------------------------------

    def status(self) -> dict:
        mode = self._settings["warm_set"]
        running = self._running()
        current = None
        if self.current is not None and self.current.source is not None:
            e = self._entries.get(self.current.source.key)
            current = {"path": self.current.path, "size": self.current.size,
                       "filled": e.filled if e is not None and e.state == "filling" else 0}
        total = sum(d["size"] for d in self.done) + sum(i.size for i in self.queue) + (
            current["size"] if current else 0)
        done_bytes = sum(d["size"] for d in self.done) + (current["filled"] if current else 0)
        state = (("paused" if mode == "paused" else "refilling") if running else
                 "off" if mode == "off" else "done" if self.started else "idle")
        doc = {"mode": mode, "state": state, "size": self.size(), "started": self.started,
               "finished": self.finished, "current": current,
               "queued": [{"path": i.path, "size": i.size, "pinned": i.pinned} for i in self.queue],
               "done": list(self.done), "skipped": list(self.skipped),
               "bytes_total": total, "bytes_done": done_bytes}
        doc["summary"] = self._summary(doc)
        return doc

    @staticmethod
    def _summary(doc: dict) -> str:
        """One line: what the tray's tooltip and `hearth status` say."""
        n_done = len(doc["done"])
        left = len(doc["queued"]) + (doc["current"] is not None)
        skipped = f", {len(doc['skipped'])} skipped" if doc["skipped"] else ""
        sizes = f"{format_size(doc['bytes_done'])} of {format_size(doc['bytes_total'])}"
        if doc["state"] == "refilling":
            return f"Warm set: refilling, {n_done} of {n_done + left} models ({sizes}){skipped}"
        if doc["state"] == "paused":
            return f"Warm set: paused, {left} models left ({sizes}){skipped}"
        if doc["state"] == "done":
            return f"Warm set: {n_done} models refilled at start{skipped}"
        return "Warm set: off" if doc["mode"] == "off" else "Warm set: nothing to refill"

