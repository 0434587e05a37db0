"""The one service object: every cache operation, called alike by HTTP, the CLI and the tray.

Service holds the pieces (entries, index, roots, fills, budget and eviction, events) and does the
operations that need several of them. It runs on the daemon's asyncio loop and is touched from nowhere
else: the tray hops onto the loop to call it, and fill threads report back through the loop (fills.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from ..core import login_units
from ..core.errors import BadRequest, Busy, HearthError, NotFound, SourceChanged
from ..core.home import shm_dir
from ..core.version import PROTOCOL, __version__
from . import processes, segments
from .activity import Activity
from .budget import resolve_budget, shm_free, shm_total, shrink_to_budget
from .catalog import list_models
from .entries import Entries, Entry
from .events import Events
from .fills import Fills
from .holds import Holds, check_request
from .index import Index
from .roots import Roots, real_path
from .segments import SourceId
from .settings import Settings
from .slots import PRELOAD, WARM
from .warmset import WarmSet

log = logging.getLogger("hearth.service")

SWEEP_S = 1.0
# How long a stop waits for evicted segments' pages to be freed (reaper.py): ~4 s for a 23 GB segment here.
STOP_FREES_S = 30.0
PATH_SETTINGS = ("model_dirs", "pinned")


class Service:
    """Acquire, release, preload, evict, pin, config, status, strategy and roots, in one place."""

    def __init__(self, home: Path, request_stop: Callable[[], None] = lambda: None):
        self.home = home
        self._request_stop = request_stop  # ends the daemon's serving (main.py)
        self.settings = Settings(home / "config.json")
        self.index = Index(home / "index.json")
        self.activity = Activity(home / "activity.json")
        self.events = Events(record=self.activity.record)
        self.entries = Entries(self.events)
        self.allowed = Roots(self.settings)
        self.stats = self.activity.stats  # since this start; activity.totals since the first (activity.py)
        self.holds = Holds()
        self.fills = Fills(self.settings, self.entries, self.events, self.index, self.stats, self.budget,
                           protected=self.holds.protects)
        self.warm = WarmSet(self.settings, self.entries, self.index, self.fills, self.resolve, self.budget)
        self._sweeper: asyncio.Task | None = None
        self.strategy: dict | None = None
        self.started = time.time()

    # ---- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Clean up after a previous daemon, re-adopt what is still valid, begin the warm set's refill."""
        self.entries.update(await asyncio.to_thread(self.index.recover, self.settings["pinned"]))
        self._sweeper = asyncio.ensure_future(self._sweep_forever())
        self.warm.start()

    async def stop(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
        self.warm.stop()
        self.fills.cancel()
        self.index.save(self.entries)
        self.index.flush()
        self.activity.save()
        self.activity.flush()
        try:  # evicted segments' frees end before the stop does (past the bound, the interpreter's exit joins them)
            await asyncio.wait_for(self.entries.reaper.freed(), STOP_FREES_S)
        except asyncio.TimeoutError:
            log.warning("stopping with %d bytes of evicted segments still being freed",
                        self.entries.reaper.freeing())

    def shutdown(self, unless_busy: bool = False) -> dict:
        """Stop the daemon; its segments stay in the tmpfs and the next daemon re-adopts them.

        `unless_busy`: refuse (Busy) while a segment is held or leased or a load or preload is filling, checked
        here on the loop so no acquire slips in between. The pack replaces an outdated daemon only when it is
        idle. The warm set's refill does not count: the next daemon resumes it from the index.
        """
        if unless_busy:
            held = sorted({pid for e in self.entries.all() for pid in e.holders()})
            filling = [k for k in self.fills.pending() if (f := self.fills.get(k)) is None or f.priority != WARM]
            if held or filling:
                raise Busy(f"the daemon is in use: segments held by {len(held)} process(es) {held[:8]}, "
                           f"{len(filling)} fill(s) under way")
        log.info("shutdown requested")
        self._request_stop()
        return {"stopping": True, "pid": os.getpid()}

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                self.sweep()  # on the loop: it mutates entries, and a few stat calls are cheap
            except Exception:  # the sweep must never die; the next one tries again
                log.exception("sweep failed")

    def sweep(self) -> None:
        """Drop leases of dead or lapsed clients and lapsed holds, free stale segments, notice changed
        source files, and keep the last use of held models fresh: ComfyUI reuses a loader's output without
        loading again, so a model in use for an hour was acquired once, an hour ago."""
        self.holds.sweep()
        now = time.time()
        for e in self.entries.values():
            if e.state == "ready" and e.held():
                e.last_use = now
        if self.entries.sweep():
            self.index.save(self.entries)

    # ---- allowed files ----------------------------------------------------------------------------

    def roots(self) -> list[str]:
        return self.allowed.all()

    def add_roots(self, roots: Any) -> dict:
        """Allow model folders a ComfyUI process registers (existing directories only)."""
        self.allowed.add(roots)
        return {"roots": self.roots()}

    def resolve(self, path: Any) -> SourceId:
        """The identity of an allowed model file, or a typed error saying why it is not allowed."""
        return self.allowed.resolve(path)

    # ---- acquire, release, preload ----------------------------------------------------------------

    async def acquire(self, path: Any, pid: int | None = None) -> dict:
        """Make the file's segment ready (filling it if needed) and lease it to `pid`."""
        lessee = pid if isinstance(pid, int) and pid > 0 else None
        for attempt in (0, 1):
            source = self.resolve(path)
            try:
                entry, hit = await self._ensure(source, lessee)
                break
            except SourceChanged:
                if attempt:
                    raise
                log.info("%s changed during its fill; trying once more", source.path)
        now = time.time()
        entry.last_use = now
        if hit:
            entry.hits += 1
            self.stats["hits"] += 1
        else:
            self.stats["misses"] += 1
        if lessee is not None:
            entry.leases[lessee] = now
        self.events.emit("cache", action="acquire", key=entry.key, path=entry.source.path, hit=hit, pid=pid,
                         by=processes.label(lessee) if lessee is not None else None)
        return {"segment": str(segments.segment_path(entry.key)), "size": entry.size, "key": entry.key,
                "hit": hit, "tensors": entry.tensors, "fill_seconds": entry.fill_seconds}

    async def _ensure(self, source: SourceId, pid: int | None) -> tuple[Entry, bool]:
        self.entries.drop_other_versions(source)
        entry = self.entries.get(source.key)
        if entry is not None and entry.state == "ready":
            return entry, True
        # shield: a client that hangs up must not cancel a fill other clients are waiting for
        return await asyncio.shield(self.fills.start(source, lessee=pid)), False

    def release(self, key: Any, pid: int | None) -> dict:
        """Drop `pid`'s lease; answers the pids still leasing the segment (its mappings' holders are in the
        status: reading them costs a pass over /proc/locks, which a call per load does not need)."""
        found = [e for e in self.entries.all() if e.key == key]
        if not found:
            raise NotFound(f"no segment {key!r}")
        for e in found:
            if pid is not None:  # a release without a pid releases nothing
                e.leases.pop(pid, None)
        return {"key": key, "leases": sorted({p for e in found for p in e.leases})}

    async def preload(self, paths: Any) -> dict:
        """Queue background fills; answer at once with what was queued and what was refused."""
        sources, refused = self._resolve_all(paths)
        for source in sources:
            self._preload(source)
        return {"queued": [self._brief(s) for s in sources], "refused": refused}

    def _resolve_all(self, paths: Any) -> tuple[list[SourceId], list[dict]]:
        if isinstance(paths, str):
            paths = [paths]
        if not isinstance(paths, list):
            raise BadRequest("paths must be a list")
        sources, refused = [], []
        for p in paths:
            try:
                sources.append(self.resolve(p))
            except HearthError as e:
                refused.append({"path": p, **e.to_dict()["error"]})
        return sources, refused

    @staticmethod
    def _brief(source: SourceId) -> dict:
        return {"path": source.path, "key": source.key, "size": source.size}

    def _preload(self, source: SourceId) -> None:
        """Start a background fill of `source` unless it is ready."""
        self.entries.drop_other_versions(source)
        entry = self.entries.get(source.key)
        if entry is None or entry.state != "ready":
            # Registered before the answer goes out, so that a status read right after it shows the file
            # pending (waiting for a fill slot), not absent.
            self.fills.start(source, PRELOAD).add_done_callback(self._preload_done)

    async def hold(self, hold_id: Any, paths: Any, pid: int | None = None, seconds: Any = None) -> dict:
        """Keep what a queued prompt names from eviction (holds.py) and prefetch what is not cached yet.

        Sent again while the prompt waits (it renews the hold, and prefetches what had no room before);
        `paths` empty drops the hold. A file that has no room without evicting what is held, pinned or
        kept for another queued prompt is not filled now: it `waits`, and the prompt's loader fills it
        when it runs.
        """
        hold_id, seconds = check_request(hold_id, seconds)
        if paths in ([], None):
            return {"hold": hold_id, "released": self.holds.drop(hold_id)}
        sources, refused = self._resolve_all(paths)
        self.holds.set(hold_id, [s.path for s in sources], pid, seconds)
        queued, ready, waits = [], [], []
        for source in sources:
            entry = self.entries.get(source.key)
            if entry is not None and entry.state == "ready":
                ready.append(self._brief(source))
            elif self.fills.get(source.key) is not None or self.fills.would_fit(source, PRELOAD):
                self._preload(source)
                queued.append(self._brief(source))
            else:
                waits.append(self._brief(source))
        return {"hold": hold_id, "queued": queued, "ready": ready, "waits": waits, "refused": refused}

    @staticmethod
    def _preload_done(task: asyncio.Future) -> None:
        if not task.cancelled() and (e := task.exception()) is not None:
            log.warning("preload failed: %s", e.message if isinstance(e, HearthError) else repr(e))

    # ---- evict, pin -------------------------------------------------------------------------------

    def evict(self, path: Any = None, all: bool = False, key: Any = None) -> dict:
        """Remove segments now (by source path, segment key, or all); held ones lose their name at once and
        their memory when let go."""
        targets = list(self.entries.values()) if all else self._entries_for(path, key)
        forgotten = self._forget(path, key, all, targets)
        if not all and not targets and not forgotten:
            raise NotFound(f"{path if key is None else key} is not in the cache")
        done: list[dict[str, Any]] = []
        pending: list[dict[str, Any]] = []
        filling: list[dict[str, Any]] = []
        for e in targets:
            if e.state == "filling":  # its fill publishes it when it ends: not evicted, and not said to be
                filling.append({"path": e.source.path, "key": e.key, "size": e.size})
                continue
            if e.pinned:
                self._set_pinned(e.source.path, False)
            self.entries.drop(e, "evicted by the user")
            self.stats["evictions"] += 1
            (pending if e.state == "stale" else done).append(
                {"path": e.source.path, "key": e.key, "size": e.size, "holders": e.holders()})
        self.index.save(self.entries)
        return {"evicted": done, "pending": pending, "filling": filling}

    def _forget(self, path: Any, key: Any, all: bool, targets: list[Entry]) -> bool:
        """What the user evicts is not brought back by the warm set either; True if it remembered some."""
        before = len(self.index.remembered)
        if all:
            self.index.forget()
            self.warm.forget()
            return before > 0
        paths = {e.source.path for e in targets}
        if key is None:
            paths.add(real_path(path))
        elif (r := self.index.remembered.get(key)) is not None:
            paths.add(r.source.path)
        for p in paths:
            self.index.forget(path=p)
            self.warm.forget(p)
        return len(self.index.remembered) < before

    def _entries_for(self, path: Any = None, key: Any = None) -> list[Entry]:
        if key is not None:
            if not isinstance(key, str):  # a list or an object would reach the index's dict (unhashable)
                raise BadRequest("key must be a segment's key, a string")
            return [e for e in self.entries.values() if e.key == key]
        real = real_path(path)
        return [e for e in self.entries.values() if e.source.path == real]

    async def pin(self, path: Any, pinned: bool = True) -> dict:
        """Pin (never LRU-evicted, refilled at start, filled now if absent) or unpin a model."""
        if pinned:
            source = self.resolve(path)
            self._set_pinned(source.path, True)
            result = await self.preload([source.path])
            real = source.path
        else:
            real = real_path(path)
            self._set_pinned(real, False)
            result = {}
        entry = next((e for e in self.entries.values() if e.source.path == real), None)
        self.events.emit("cache", action="pinned" if pinned else "unpinned", path=real,
                         key=entry.key if entry else None)
        return {"path": os.path.realpath(str(path)), "pinned": pinned, **result}

    def _set_pinned(self, real: str, pinned: bool) -> None:
        current = [p for p in self.settings["pinned"] if p != real]
        self.settings.update({"pinned": current + [real] if pinned else current})
        for e in self.entries.values():
            if e.source.path == real:
                e.pinned = pinned

    # ---- config, strategy, status, events --------------------------------------------------------

    def used(self) -> int:
        return self.entries.used()

    def budget(self) -> int:
        return resolve_budget(self.settings["budget"])

    def config(self, changes: dict | None = None) -> dict:
        if changes:
            if not isinstance(changes, dict):
                raise BadRequest("config changes must be an object")
            self.settings.update(changes)
            if "pinned" in changes:  # what LRU skips is the entries' flag: keep it in step with the setting
                for e in self.entries.values():
                    e.pinned = e.source.path in self.settings["pinned"]
            if "budget" in changes:
                before = len(self.entries)
                shrink_to_budget(self.entries, self.budget())
                self.stats["evictions"] += before - len(self.entries)
                self.index.save(self.entries)
            if "max_fills" in changes:
                self.fills.slots.changed()
            if "warm_set" in changes:
                self.warm.mode_changed()
            # For the activity: what changed, without the path lists (model_dirs, pinned), which say where
            # the user keeps files and travel to ComfyUI's pages in events.
            self.events.emit("config", changes={k: self.settings[k] for k in changes if k not in PATH_SETTINGS},
                             changed=sorted(changes))
        # Beside the settings: what they amount to, for `hearth config` and the panel (not settings themselves).
        return {**self.settings.values, "budget_bytes": self.budget(), "sources": dict(self.settings.sources),
                "roots_in_effect": self.allowed.origins()}

    async def autostart(self, enabled: Any = None) -> dict:
        """Start at login, the panel's toggle: on (True), off (False), or None to read the state. The files are
        the state (core/login_units.py): `hearth autostart` and the panel always agree."""
        if enabled is not None and not isinstance(enabled, bool):
            raise BadRequest("enabled must be true or false")
        done: list[str] = []
        if enabled is not None:
            try:
                done = await asyncio.to_thread(login_units.enable if enabled else login_units.disable)
            except OSError as e:
                raise HearthError(f"start at login: {e.strerror}: {e.filename}") from None
        return {**login_units.state(), "done": done}

    async def models(self) -> dict:
        """The cacheable files under the allowed roots, named relative to each, and whether each is cached."""
        found = await asyncio.to_thread(list_models, self.roots())
        cached = {e.source.path: e.state for e in self.entries.values()}
        for root in found["roots"]:
            for f in root["files"]:
                f["state"] = cached.get(f.pop("real"))
        return found

    def set_strategy(self, plan: Any) -> dict:
        if not isinstance(plan, dict):
            raise BadRequest("strategy must be an object")
        self.strategy = {**plan, "reported": time.time()}
        self.events.emit("strategy", **self.strategy)
        return self.strategy

    def status(self) -> dict:
        vm = psutil.virtual_memory()
        return {
            "version": __version__, "protocol": PROTOCOL, "pid": os.getpid(), "started": self.started,
            "budget": self.budget(), "used": self.used(),
            "ram": {"total": vm.total, "available": vm.available},
            # (the tmpfs counts what is still being freed as used: `freeing` says how much of it goes)
            "shm": {"dir": str(shm_dir()), "total": shm_total(), "free": shm_free(),
                    "freeing": self.entries.reaper.freeing()},
            "stats": dict(self.stats), "totals": dict(self.activity.totals), "counted_since": self.activity.since,
            "strategy": self.strategy, "roots": self.roots(),
            "pending": self.fills.pending(),
            "fills": self.fills.describe(),
            "failures": list(self.fills.failures.values()),
            "warm_set": self.warm.status(),
            "holds": self.holds.describe(),
            "segments": [
                {"key": e.key, "path": e.source.path, "size": e.size, "state": e.state, "filled": e.filled,
                 "hits": e.hits, "last_use": e.last_use, "pinned": e.pinned, "tensors": e.tensors,
                 "holders": e.holders(), "held_by": [processes.label(p) for p in e.holders()],
                 "fill_seconds": e.fill_seconds, "memory_lock": e.memory_lock_state()}
                for e in sorted(self.entries.all(), key=lambda e: -e.last_use)],
        }

    def subscribe(self) -> asyncio.Queue:
        return self.events.subscribe()

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self.events.unsubscribe(q)
