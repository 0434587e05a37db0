"""Fills: copying a source file into its segment, one fill per key, best priority first.

Priorities (slots.py): URGENT (a load waits on it), PRELOAD (a user's preload, a queued prompt's prefetch),
WARM (the warm set's refill at start). Concurrency rules:
- single flight: a fill is registered under its key as soon as it is asked for; later requests for the key
  get the same task (callers shield it, so one that hangs up cannot cancel a fill others await). A request
  of a better priority raises the fill's: an acquire of a key being preloaded jumps the queue, and its copy
  threads leave idle I/O priority at their next range. The acquires waiting on a fill are leased its
  entry in the loop step that makes it ready, before their awaits resume: another fill's eviction would
  otherwise take it in between, and they would be answered a name already gone;
- slots: background fills never hold the slots a waited-on fill needs (slots.py). While an urgent fill
  runs, background fills pause at their next 16 MiB range, so what a load waits for has the disk to
  itself; WARM fills also pause while the warm set is paused;
- I/O priority: background fills read in the idle class, set per copy thread (Linux keeps an I/O priority
  per thread; the kernel's mq-deadline and BFQ schedulers serve idle-class reads only when no other reads
  wait, see bench/RESULTS.md for what it does here);
- room is made (eviction) and the filling entry registered in one step on the loop, so two fills never
  count on the same free bytes; the victims' pages are freed off the loop (reaper.py), and a fill whose
  tmpfs room is partly theirs waits for them before its copy threads allocate it. What a queued prompt
  names (`protected`) is never evicted for a background fill, and only after everything else for an
  urgent one; a refill never evicts a model used after the one it brings back. An urgent fill that
  still does not fit aborts running background fills, lowest priority first, before it gives up;
- only `segments.fill` runs off the loop, in a worker thread with its own copy threads (for an urgent
  fill of one range, the worker thread copies it itself: under load every hand-over waits for a CPU); its
  progress comes back through `call_soon_threadsafe`, the copy threads read the state they wait on under
  `_cv`, and everything else here runs on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from ..core.errors import HearthError, OverBudget, ShmFull
from ..core.sizes import format_size
from . import segments
from .budget import choose_victims, make_room, wait_for_frees
from .entries import Entries, Entry
from .events import Events
from .index import Index
from .segments import SourceId
from .settings import Settings
from .slots import PRIORITY_NAMES, URGENT, WARM, Slots, Ticket

log = logging.getLogger("hearth.fills")

MAX_FAILURES = 50


class Aborted(Exception):
    """A background fill stopped before its end: a waited-on fill needed its room, the warm set was turned
    off, or the daemon stops. Its `.part` is removed; nothing was published."""


class Fill:
    """One fill, queued or under way: what its copy threads and the warm set look at."""

    def __init__(self, source: SourceId, priority: int, last_use: float | None, hits: int):
        self.source = source
        self.ticket = Ticket(priority)
        self.task: asyncio.Future
        self.aborted: str | None = None  # why it must stop (read by its copy threads under Fills._cv)
        # The processes whose acquires wait for it: leased the entry in the step that makes it ready, since
        # their awaits resume a few loop steps later, and another fill's eviction could take it meanwhile.
        self.lessees: set[int] = set()
        # A refill keeps the use it remembers: a model used last week stays last week's for the LRU.
        self.last_use, self.hits = last_use, hits

    @property
    def priority(self) -> int:
        return self.ticket.priority


_io = threading.local()  # .idle: whether this thread reads in the idle class now


def _set_io_class(idle: bool) -> None:
    """This thread's I/O class: idle, or back to the default (derived from the CPU nice value)."""
    import psutil

    if getattr(_io, "idle", False) == idle:
        return
    try:
        psutil.Process(threading.get_native_id()).ionice(
            psutil.IOPRIO_CLASS_IDLE if idle else psutil.IOPRIO_CLASS_NONE)
        _io.idle = idle
    except (psutil.Error, OSError, AttributeError, ValueError) as e:  # not Linux, or the kernel refused it
        log.debug("I/O priority not set: %s", e)


class Fills:
    def __init__(self, settings: Settings, entries: Entries, events: Events, index: Index,
                 stats: dict[str, int], budget: Callable[[], int],
                 protected: Callable[[Entry], bool] = lambda e: False):
        self._settings, self._entries, self._events, self._index = settings, entries, events, index
        self._stats, self._budget, self._protected = stats, budget, protected
        self._fills: dict[str, Fill] = {}
        self.slots = Slots(lambda: settings["max_fills"])
        self.failures: dict[str, dict] = {}  # key -> why its last fill failed (insertion ordered)
        self._cv = threading.Condition()
        self._urgent_running = 0  # urgent fills inside their slots (copy threads read it under _cv)
        self._warm_paused = False
        self._stopping = False

    # ---- what runs ----------------------------------------------------------------------------------

    def pending(self) -> list[str]:
        """Keys with a fill queued or under way."""
        return sorted(self._fills)

    def get(self, key: str) -> Fill | None:
        return self._fills.get(key)

    def describe(self) -> list[dict]:
        """The fills queued or under way, best priority first, for the status document."""
        out = []
        for f in sorted(self._fills.values(), key=lambda f: (f.priority, f.ticket.seq)):
            state = "queued"
            if f.ticket.inside:
                state = "paused" if self._gives_way(f.priority) else "filling"
            out.append({"key": f.source.key, "path": f.source.path, "size": f.source.size,
                        "priority": PRIORITY_NAMES[f.priority], "state": state})
        return out

    # ---- starting, raising, pausing, aborting ---------------------------------------------------

    def start(self, source: SourceId, priority: int = URGENT, last_use: float | None = None,
              hits: int = 0, lessee: int | None = None) -> asyncio.Future:
        """The one fill of this key (single flight): the one under way, its priority raised to `priority` if
        that is better, or a new one, registered at once. `lessee`: the pid of an acquire awaiting it."""
        f = self._fills.get(source.key)
        if f is None:
            f = Fill(source, priority, last_use, hits)
            f.task = asyncio.ensure_future(self._fill(f))
            self._fills[source.key] = f

            def done(_t: asyncio.Future, k: str = source.key, this: Fill = f) -> None:
                if self._fills.get(k) is this:  # not a newer fill of the same key
                    del self._fills[k]

            f.task.add_done_callback(done)
        elif priority < f.priority:
            log.info("%s: %s fill raised to %s", source.path, PRIORITY_NAMES[f.priority],
                     PRIORITY_NAMES[priority])
            f.ticket.priority = priority
            self._sync()
            self.slots.changed()
        if lessee is not None:
            f.lessees.add(lessee)
        return f.task

    def pause_warm(self, paused: bool) -> None:
        """Hold (or release) the warm set's fills at their next range."""
        with self._cv:
            self._warm_paused = paused
            self._cv.notify_all()

    def abort(self, f: Fill, why: str) -> None:
        """Stop a background fill: at its copy threads' next range when under way, at once when queued."""
        with self._cv:
            f.aborted = why
            self._cv.notify_all()
        if not f.ticket.inside:
            f.task.cancel()  # still waiting for a slot: _fill turns the cancellation into Aborted

    def cancel(self) -> None:
        """The daemon stops: every fill ends at its next range, and nobody waits for one."""
        self._stopping = True
        for f in list(self._fills.values()):
            self.abort(f, "the daemon is stopping")
            f.task.cancel()

    def _sync(self) -> None:
        with self._cv:
            self._urgent_running = self.slots.urgent_inside()
            self._cv.notify_all()

    def _gives_way(self, priority: int) -> bool:
        """Whether a fill of this priority waits before its next range now."""
        return priority != URGENT and bool(self._urgent_running or (priority == WARM and self._warm_paused))

    def _turn(self, f: Fill) -> Callable[[], None]:
        """What each copy thread of `f` runs before each range: give way while it must, stop when aborted,
        and read in the I/O class its priority asks for."""
        def turn() -> None:
            _set_io_class(f.priority != URGENT)  # before waiting too: a paused thread is an idle-class one
            with self._cv:
                while True:
                    if f.aborted:
                        raise Aborted(f.aborted)
                    p = f.priority
                    if not self._gives_way(p):
                        break
                    self._cv.wait()
            _set_io_class(p != URGENT)  # raised while it waited

        return turn

    # ---- one fill -------------------------------------------------------------------------------

    async def _fill(self, f: Fill) -> Entry:
        try:
            async with self.slots.taken(f.ticket):
                self._sync()
                return await self._run(f)
        except asyncio.CancelledError:
            if f.aborted and not self._stopping:  # aborted while queued: an end with a reason, not a cancel
                raise Aborted(f.aborted) from None
            raise
        finally:
            self._sync()

    def _rank(self, priority: int, last_use: float | None) -> Callable[[Entry], int | None]:
        """Which entries a fill may evict, and in what order (budget.choose_victims)."""
        def rank(e: Entry) -> int | None:
            if self._protected(e):
                return 1 if priority == URGENT else None
            if priority == WARM and last_use is not None and e.last_use >= last_use:
                return None
            return 0
        return rank

    def would_fit(self, source: SourceId, priority: int) -> bool:
        """Whether a fill of `source` at `priority` finds room now, after the fills queued before it."""
        budget = self._budget()
        queued = sum(f.source.size for f in self._fills.values() if f.source.key not in self._entries)
        return source.size <= budget and choose_victims(
            self._entries.values(), self._entries.used() + queued, source.size, budget,
            self._rank(priority, None)) is not None

    async def _make_room(self, f: Fill) -> None:
        while True:
            await wait_for_frees(self._entries, f.source.size)
            try:
                make_room(self._entries, f.source, self._budget(), self._stats,
                          self._rank(f.priority, f.last_use))
                return
            except (OverBudget, ShmFull):
                if f.priority != URGENT:
                    raise
                victim = self._background_victim(f)
                if victim is None:
                    raise
            self.abort(victim, f"gave its room to {f.source.path}, which a load waits for")
            await asyncio.wait([victim.task])  # its entry leaves the table when its copy threads stop

    def _background_victim(self, f: Fill) -> Fill | None:
        """The running background fill whose room goes first to urgent `f`: lowest priority, latest."""
        running = [g for g in self._fills.values() if g is not f and g.priority != URGENT and g.ticket.inside
                   and (e := self._entries.get(g.source.key)) is not None and e.state == "filling"]
        return max(running, key=lambda g: (g.priority, g.ticket.seq), default=None)

    async def _run(self, f: Fill) -> Entry:
        source = f.source
        await self._make_room(f)
        now = time.time()
        entry = Entry(source, "filling", now, f.last_use or now, hits=f.hits,
                      pinned=source.path in self._settings["pinned"])
        self._entries[source.key] = entry
        self._events.emit("cache", action="filling", key=source.key, path=source.path, size=source.size,
                          priority=PRIORITY_NAMES[f.priority])
        loop = asyncio.get_running_loop()
        last = [0.0]

        def progress(done: int) -> None:  # called from fill threads
            t = time.monotonic()
            if t - last[0] > 0.1 or done == source.size:
                last[0] = t
                loop.call_soon_threadsafe(self._progress, entry, done)

        t0 = time.perf_counter()
        try:
            await wait_for_frees(self._entries, source.size)  # the victims' pages, if the room is theirs
            # inline for an urgent fill only: a background one's turn sets the thread's I/O class to idle,
            # which the pool's thread (and any thread it starts, such as a library's) would keep
            filled = await asyncio.to_thread(segments.fill, source, progress, self._turn(f),
                                             f.priority == URGENT)
        except BaseException as e:
            self._entries.pop(source.key, None)
            if not isinstance(e, asyncio.CancelledError):
                if isinstance(e, HearthError):
                    error = e.to_dict()["error"]
                elif isinstance(e, Aborted):
                    error = {"code": "aborted", "message": f"{source.path}: fill stopped: {e}"}
                else:
                    error = {"code": "internal", "message": f"{source.path}: {type(e).__name__}: {e}"}
                self._remember_failure(source, error)
                self._events.emit("cache", action="failed", key=source.key, path=source.path, error=error)
            raise
        self.failures.pop(source.key, None)
        entry.fd, entry.tensors, entry.filled = filled.fd, len(filled.header.tensors), source.size
        entry.fill_seconds = time.perf_counter() - t0
        entry.state = "ready"
        entry.leases.update(dict.fromkeys(f.lessees, time.time()))
        self._stats["fills"] += 1
        self._index.save(self._entries)
        await self._index.saved()
        self._events.emit("cache", action="ready", key=source.key, path=source.path,
                          seconds=round(entry.fill_seconds, 3), from_page_cache=filled.from_page_cache)
        log.info("filled %s: %s in %.2f s (%s; %s of it from the page cache)", source.path,
                 format_size(source.size), entry.fill_seconds, PRIORITY_NAMES[f.priority],
                 format_size(filled.from_page_cache))
        return entry

    def _remember_failure(self, source: SourceId, error: dict) -> None:
        """Why the last fill of a key failed, for `hearth preload` and the panel (the latest few only)."""
        self.failures.pop(source.key, None)
        self.failures[source.key] = {"key": source.key, "path": source.path, "time": time.time(), **error}
        while len(self.failures) > MAX_FAILURES:
            del self.failures[next(iter(self.failures))]

    def _progress(self, entry: Entry, done: int) -> None:
        entry.filled = done
        self._events.emit("fill", key=entry.key, path=entry.source.path, done=done, total=entry.size)
