"""The one service object: every cache operation lives here, and HTTP, the CLI and the tray call it.

It runs on the daemon's asyncio loop; fills run in worker threads. Concurrency rules:
- one fill per key (single flight): later requests for the key await the same task;
- at most `max_fills` fills of different keys at once;
- room is made (LRU eviction of unheld, unpinned segments) and the new entry registered in one step on
  the loop, so two fills can never both count on the same free bytes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from ..core.errors import BadRequest, HearthError, NotAllowed, NotFound, OverBudget, ShmFull, SourceChanged
from ..core.home import shm_dir
from ..core.model_files import CACHED_EXTS, is_cached_kind
from ..core.jsonfile import read_json, write_json_atomic
from ..core.sizes import format_size
from ..core.version import PROTOCOL, __version__
from . import segments
from .budget import choose_victims, resolve_budget, shm_free, shm_total
from .segments import SourceId
from .settings import Settings
from .slots import Slots

log = logging.getLogger("hearth.service")

# A client opens and flocks its segment right after acquire; the lease covers that gap and names the
# holder for the panel. After it, the flock is the ground truth of "held".
LEASE_GRACE_S = 30.0
SWEEP_S = 1.0


@dataclass(eq=False)
class Entry:
    source: SourceId
    state: str  # "filling", "ready", "stale" (unlinked, memory still held by clients)
    created: float
    last_use: float
    hits: int = 0
    filled: int = 0
    tensors: int = 0
    fill_seconds: float | None = None
    fd: int = -1
    pinned: bool = False
    leases: dict[int, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.source.key

    @property
    def size(self) -> int:
        return self.source.size

    def held(self) -> bool:
        return bool(self.leases) or (self.fd >= 0 and segments.is_held(self.fd))

    @property
    def evictable(self) -> bool:
        return self.state == "ready" and not self.pinned and not self.held()

    def holders(self) -> list[int]:
        pids = set(self.leases)
        if self.fd >= 0:
            pids.update(segments.holder_pids(self.fd))
        return sorted(pids)


def _within(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:
        return False


def _real_path(path: Any) -> str:
    """The real path of an absolute path a request gave.

    Relative paths are refused: resolved here they would name a file under the daemon's working folder, not
    the caller's, which can be another file with the same relative name (a wrong tensor). Clients resolve
    paths in their own process. A string with a NUL byte would make os calls raise.
    """
    if not isinstance(path, str) or not path or "\0" in path:
        raise BadRequest("path must be a non-empty string without NUL bytes")
    if not os.path.isabs(path):
        raise BadRequest(f"{path}: the daemon takes absolute paths only (a relative path would be looked up "
                         f"in the daemon's working folder, not yours)")
    try:
        return os.path.realpath(path)
    except OSError as e:  # a link removed while realpath read it: the path is changing under us
        raise SourceChanged(f"{path} changed while it was being resolved ({e.strerror})") from None


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Service:
    """Acquire, release, preload, evict, pin, config, status, strategy and roots, in one place."""

    def __init__(self, home: Path):
        self.home = home
        self.settings = Settings(home / "config.json")
        self.index_path = home / "index.json"
        self.entries: dict[str, Entry] = {}
        # Evicted segments that clients still map: unlinked, their memory counted until the last holder
        # lets go. Kept apart from `entries` because a refill of the same file takes the same key meanwhile.
        self.stale: list[Entry] = []
        self._fills: dict[str, asyncio.Future] = {}
        self.failures: dict[str, dict] = {}  # key -> why its last fill failed (insertion ordered)
        self._slots = Slots(lambda: self.settings["max_fills"])
        self._registered_roots: set[str] = set()
        self._subscribers: set[asyncio.Queue] = set()
        self._sweeper: asyncio.Task | None = None
        self.strategy: dict | None = None
        self.stats = {"hits": 0, "misses": 0, "fills": 0, "evictions": 0}
        self.started = time.time()

    # ---- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Clean up after a previous daemon, re-adopt what is still valid, refill pinned models."""
        await asyncio.to_thread(self._recover)
        self._sweeper = asyncio.ensure_future(self._sweep_forever())
        pinned = [p for p in self.settings["pinned"] if os.path.exists(p)]
        if pinned:
            await self.preload(pinned)

    async def stop(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
        for task in list(self._fills.values()):
            task.cancel()
        self._save_index()

    def _recover(self) -> None:
        index = read_json(self.index_path, {}) or {}
        keys, parts = segments.list_own()
        for part in parts:
            segments._unlink_quietly(part)
        for key in keys:
            try:
                rec = index[key]
                source = SourceId(**rec["source"])
                current = SourceId.of(source.path)
                if (field_ := source.mismatch(current)) is not None or current.key != key:
                    raise SourceChanged(f"source changed ({field_})")
                fd, header = segments.open_existing(key, source)
            except (KeyError, TypeError, OSError, HearthError) as e:
                log.info("removing segment %s left by an earlier daemon: %s", key, e or "not in the index")
                segments.unlink(key)
                continue
            self.entries[key] = Entry(
                source, "ready", rec.get("created", time.time()), rec.get("last_use", time.time()),
                hits=int(rec.get("hits", 0)), filled=source.size, tensors=len(header.tensors), fd=fd,
                pinned=source.path in self.settings["pinned"])
            log.info("re-adopted %s (%s)", source.path, format_size(source.size))
        self._save_index()

    def _save_index(self) -> None:
        doc = {e.key: {"source": asdict(e.source), "hits": e.hits, "last_use": e.last_use,
                       "created": e.created, "tensors": e.tensors}
               for e in self.entries.values() if e.state == "ready"}
        write_json_atomic(self.index_path, doc)

    # ---- allowed files ----------------------------------------------------------------------------

    def roots(self) -> list[str]:
        env = [p for p in os.environ.get("HEARTH_MODEL_DIRS", "").split(os.pathsep) if p]
        found = {os.path.realpath(os.path.expanduser(p)) for p in [*self.settings["model_dirs"], *env]}
        return sorted(found | self._registered_roots)

    def add_roots(self, roots: list[str]) -> dict:
        """Allow model folders a ComfyUI process registers (existing directories only)."""
        if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
            raise BadRequest("roots must be a list of folder paths")
        for r in roots:
            real = os.path.realpath(r)
            if os.path.isdir(real):
                self._registered_roots.add(real)
        return {"roots": self.roots()}

    def resolve(self, path: Any) -> SourceId:
        """The identity of an allowed model file, or a typed error saying why it is not allowed.

        The identity is taken from the file opened, not the name checked: a symlink or rename planted
        between the two (to lead out of the allowed folders, or to another file) is caught by
        `segments.identify`, and the fill serves only the inode identified here.
        """
        real = _real_path(path)
        # The real file's name or the name given: the Hugging Face cache keeps models as blobs without an
        # extension behind `snapshots/<rev>/model.safetensors` links. (The root check uses the real path.)
        if not (is_cached_kind(real) or is_cached_kind(path)):
            raise NotAllowed(f"{path}: only {', '.join(CACHED_EXTS)} files are cached")
        if not any(_within(real, r) for r in self.roots()):
            raise NotAllowed(f"{path} is outside the allowed model folders; add its folder with "
                             f"`hearth config model_dirs PATH` or HEARTH_MODEL_DIRS")
        return segments.identify(real, path)

    # ---- acquire and fill -------------------------------------------------------------------------

    async def acquire(self, path: Any, pid: int | None = None) -> dict:
        """Make the file's segment ready (filling it if needed) and lease it to `pid`."""
        for attempt in (0, 1):
            source = self.resolve(path)
            try:
                entry, hit = await self._ensure(source)
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
        if isinstance(pid, int) and pid > 0:
            entry.leases[pid] = now
        self._emit("cache", action="acquire", key=entry.key, path=entry.source.path, hit=hit, pid=pid)
        return {"segment": str(segments.segment_path(entry.key)), "size": entry.size, "key": entry.key,
                "hit": hit, "tensors": entry.tensors, "fill_seconds": entry.fill_seconds}

    async def _ensure(self, source: SourceId, idle: bool = False) -> tuple[Entry, bool]:
        self._invalidate_other_versions(source)
        entry = self.entries.get(source.key)
        if entry is not None and entry.state == "ready":
            return entry, True
        # shield: a client that hangs up must not cancel a fill other clients are waiting for
        return await asyncio.shield(self._start_fill(source, idle)), False

    def _start_fill(self, source: SourceId, idle: bool) -> asyncio.Future:
        """The one fill of this key (single flight): the one under way, or a new one, registered at once."""
        task = self._fills.get(source.key)
        if task is None:
            task = asyncio.ensure_future(self._fill(source, idle))
            self._fills[source.key] = task

            def done(t: asyncio.Future, k: str = source.key) -> None:
                if self._fills.get(k) is t:  # not a newer fill of the same key
                    del self._fills[k]

            task.add_done_callback(done)
        return task

    async def _fill(self, source: SourceId, idle: bool) -> Entry:
        async with self._slots:
            self._make_room(source)
            now = time.time()
            entry = Entry(source, "filling", now, now, pinned=source.path in self.settings["pinned"])
            self.entries[source.key] = entry
            self._emit("cache", action="filling", key=source.key, path=source.path, size=source.size)
            loop = asyncio.get_running_loop()
            last = [0.0]

            def progress(done: int) -> None:  # called from fill threads
                t = time.monotonic()
                if t - last[0] > 0.1 or done == source.size:
                    last[0] = t
                    loop.call_soon_threadsafe(self._progress, entry, done)

            t0 = time.perf_counter()
            try:
                fd, header = await asyncio.to_thread(segments.fill, source, progress, idle)
            except BaseException as e:
                self.entries.pop(source.key, None)
                if not isinstance(e, asyncio.CancelledError):
                    error = (e.to_dict()["error"] if isinstance(e, HearthError)
                             else {"code": "internal", "message": f"{source.path}: {type(e).__name__}: {e}"})
                    self._remember_failure(source, error)
                    self._emit("cache", action="failed", key=source.key, path=source.path, error=error)
                raise
            self.failures.pop(source.key, None)
            entry.fd, entry.tensors, entry.filled = fd, len(header.tensors), source.size
            entry.fill_seconds = time.perf_counter() - t0
            entry.state = "ready"
            self.stats["fills"] += 1
            self._save_index()
            self._emit("cache", action="ready", key=source.key, path=source.path,
                       seconds=round(entry.fill_seconds, 3))
            log.info("filled %s: %s in %.2f s", source.path, format_size(source.size), entry.fill_seconds)
            return entry

    def _remember_failure(self, source: SourceId, error: dict) -> None:
        """Why the last fill of a key failed, for `hearth preload` and the panel (the latest few only)."""
        self.failures.pop(source.key, None)
        self.failures[source.key] = {"key": source.key, "path": source.path, "time": time.time(), **error}
        while len(self.failures) > 50:
            del self.failures[next(iter(self.failures))]

    def _progress(self, entry: Entry, done: int) -> None:
        entry.filled = done
        self._emit("fill", key=entry.key, path=entry.source.path, done=done, total=entry.size)

    def used(self) -> int:
        return sum(e.size for e in self.entries.values()) + sum(e.size for e in self.stale)

    def budget(self) -> int:
        return resolve_budget(self.settings["budget"])

    def _make_room(self, source: SourceId) -> None:
        budget, need = self.budget(), source.size
        if need > budget:
            raise OverBudget(f"{source.path} needs {format_size(need)} but the budget is "
                             f"{format_size(budget)}; raise it with `hearth config budget SIZE`")
        used = self.used()
        victims = choose_victims(self.entries.values(), used, need, budget)
        if victims is None:
            raise OverBudget(f"{source.path} needs {format_size(need)}; {format_size(used)} of the "
                             f"{format_size(budget)} budget is held or pinned")
        # The tmpfs is shared with the rest of the machine (and a budget may exceed it): when its free space
        # is short, unheld segments make room there too, least recently used first, before refusing.
        room = used + shm_free()
        if room < budget:
            victims = choose_victims(self.entries.values(), used, need, room)
            if victims is None:
                raise ShmFull(f"{shm_dir()} has {format_size(shm_free())} free, {source.path} needs "
                              f"{format_size(need)}, and the cached models there are held or pinned; "
                              f"enlarge it (Docker: --shm-size) or lower the budget")
        for v in victims:
            self._drop(v, "evicted (LRU)")
            self.stats["evictions"] += 1
        if shm_free() < need:
            raise ShmFull(f"{shm_dir()} has {format_size(shm_free())} free, {source.path} needs "
                          f"{format_size(need)}; enlarge it (Docker: --shm-size) or lower the budget")

    def _drop(self, entry: Entry, why: str) -> None:
        """Unlink a segment's name; its memory goes now, or when its last holder lets go."""
        segments.unlink(entry.key)
        if entry.state == "filling":
            return
        if self.entries.get(entry.key) is entry:
            del self.entries[entry.key]
        if entry.held():
            entry.state = "stale"
            self.stale.append(entry)
        else:
            self._close(entry)
        log.info("%s: %s", entry.source.path, why)
        self._emit("cache", action="evicted", key=entry.key, path=entry.source.path, reason=why,
                   pending=entry.state == "stale")

    def _close(self, entry: Entry) -> None:
        """Let go of a segment that is out of `entries` (its name is gone; its memory goes with this fd)."""
        if entry.fd >= 0:
            os.close(entry.fd)
            entry.fd = -1

    def _invalidate_other_versions(self, source: SourceId) -> None:
        for e in list(self.entries.values()):
            if e.source.path == source.path and e.key != source.key and e.state == "ready":
                self._drop(e, "source file changed on disk")

    # ---- background sweep -------------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                self.sweep()  # on the loop: it mutates entries, and a few stat calls are cheap
            except Exception:  # noqa: BLE001 - the sweep must never die; the next one tries again
                log.exception("sweep failed")

    def sweep(self) -> None:
        """Drop leases of dead or lapsed clients, free stale segments, notice changed source files."""
        now = time.time()
        changed = False
        for e in [*self.entries.values(), *self.stale]:
            for pid, t in list(e.leases.items()):
                if now - t > LEASE_GRACE_S or not _pid_alive(pid):
                    del e.leases[pid]
            if e.state == "stale":
                if not e.held():
                    self.stale.remove(e)
                    self._close(e)
                    changed = True
            elif e.state == "ready":
                try:
                    current = SourceId.of(e.source.path)
                    moved = e.source.mismatch(current)
                except OSError:
                    moved = "missing"
                if moved:
                    self._drop(e, f"source file changed on disk ({moved})")
                    changed = True
        if changed:
            self._save_index()

    # ---- release, preload, evict, pin -------------------------------------------------------------

    def release(self, key: Any, pid: int | None) -> dict:
        found = [e for e in [*self.entries.values(), *self.stale] if e.key == key]
        if not found:
            raise NotFound(f"no segment {key!r}")
        for e in found:
            e.leases.pop(pid, None)
        return {"key": key, "holders": sorted({p for e in found for p in e.holders()})}

    async def preload(self, paths: Any) -> dict:
        """Queue background fills; answer at once with what was queued and what was refused."""
        if isinstance(paths, str):
            paths = [paths]
        if not isinstance(paths, list):
            raise BadRequest("paths must be a list")
        queued, refused = [], []
        for p in paths:
            try:
                source = self.resolve(p)
            except HearthError as e:
                refused.append({"path": p, **e.to_dict()["error"]})
                continue
            queued.append({"path": source.path, "key": source.key, "size": source.size})
            self._invalidate_other_versions(source)
            entry = self.entries.get(source.key)
            if entry is None or entry.state != "ready":
                # Registered before this answer goes out, so that a status read right after it shows the
                # file pending (waiting for a fill slot), not absent.
                self._start_fill(source, idle=True).add_done_callback(self._preload_done)
        return {"queued": queued, "refused": refused}

    @staticmethod
    def _preload_done(task: asyncio.Future) -> None:
        if not task.cancelled() and (e := task.exception()) is not None:
            log.warning("preload failed: %s", e.message if isinstance(e, HearthError) else repr(e))

    def _entries_for(self, path: Any = None, key: Any = None) -> list[Entry]:
        if key is not None:
            return [e for e in self.entries.values() if e.key == key]
        real = _real_path(path)
        return [e for e in self.entries.values() if e.source.path == real]

    def evict(self, path: Any = None, all: bool = False, key: Any = None) -> dict:
        """Remove segments now (by source path, segment key, or all); held ones lose their name at once and
        their memory when let go."""
        targets = list(self.entries.values()) if all else self._entries_for(path, key)
        if not all and not targets:
            raise NotFound(f"{path if key is None else key} is not in the cache")
        done, pending, filling = [], [], []
        for e in targets:
            if e.state == "filling":  # its fill publishes it when it ends: not evicted, and not said to be
                filling.append({"path": e.source.path, "key": e.key, "size": e.size})
                continue
            if e.pinned:
                self._set_pinned(e.source.path, False)
            self._drop(e, "evicted by the user")
            (pending if e.state == "stale" else done).append(
                {"path": e.source.path, "key": e.key, "size": e.size, "holders": e.holders()})
        self._save_index()
        return {"evicted": done, "pending": pending, "filling": filling}

    async def pin(self, path: Any, pinned: bool = True) -> dict:
        """Pin (never LRU-evicted, refilled at start, filled now if absent) or unpin a model."""
        if pinned:
            source = self.resolve(path)
            self._set_pinned(source.path, True)
            result = await self.preload([source.path])
        else:
            real = _real_path(path)
            self._set_pinned(real, False)
            result = {}
        return {"path": os.path.realpath(str(path)), "pinned": pinned, **result}

    def _set_pinned(self, real: str, pinned: bool) -> None:
        current = [p for p in self.settings["pinned"] if p != real]
        self.settings.update({"pinned": current + [real] if pinned else current})
        for e in self.entries.values():
            if e.source.path == real:
                e.pinned = pinned

    # ---- config, strategy, status, events --------------------------------------------------------

    def config(self, changes: dict | None = None) -> dict:
        if changes:
            if not isinstance(changes, dict):
                raise BadRequest("config changes must be an object")
            self.settings.update(changes)
            if "pinned" in changes:  # what LRU skips is the entries' flag: keep it in step with the setting
                for e in self.entries.values():
                    e.pinned = e.source.path in self.settings["pinned"]
            if "budget" in changes:
                self._shrink_to_budget()
            if "max_fills" in changes:
                self._slots.changed()
        return {**self.settings.values, "budget_bytes": self.budget()}

    def _shrink_to_budget(self) -> None:
        victims = choose_victims(self.entries.values(), self.used(), 0, self.budget()) or []
        for v in victims:
            self._drop(v, "evicted (budget lowered)")
        self._save_index()

    def set_strategy(self, plan: Any) -> dict:
        if not isinstance(plan, dict):
            raise BadRequest("strategy must be an object")
        self.strategy = {**plan, "reported": time.time()}
        self._emit("strategy", **self.strategy)
        return self.strategy

    def status(self) -> dict:
        vm = psutil.virtual_memory()
        return {
            "version": __version__, "protocol": PROTOCOL, "pid": os.getpid(), "started": self.started,
            "budget": self.budget(), "used": self.used(),
            "ram": {"total": vm.total, "available": vm.available},
            "shm": {"dir": str(shm_dir()), "total": shm_total(), "free": shm_free()},
            "stats": dict(self.stats), "strategy": self.strategy, "roots": self.roots(),
            "pending": sorted(self._fills),  # keys with a fill queued or under way
            "failures": list(self.failures.values()),
            "segments": [
                {"key": e.key, "path": e.source.path, "size": e.size, "state": e.state, "filled": e.filled,
                 "hits": e.hits, "last_use": e.last_use, "pinned": e.pinned, "tensors": e.tensors,
                 "holders": e.holders(), "fill_seconds": e.fill_seconds}
                for e in sorted([*self.entries.values(), *self.stale], key=lambda e: -e.last_use)],
        }

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=1000)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._subscribers.discard(q)

    def _emit(self, kind: str, **data: Any) -> None:
        event = {"type": kind, "time": time.time(), **data}
        for q in list(self._subscribers):
            try:
                q.put_nowait(event)
            except asyncio.QueueFull:
                pass  # a stalled viewer loses events rather than slowing the cache
