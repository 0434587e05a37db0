"""index.json: what the segments in the tmpfs are, so that a restarted daemon re-adopts them, not refills.

Segments outlive the daemon (a crash, an upgrade). At start, one of ours is re-adopted only when the index
names it, its source file is unchanged (same identity, same key) and it still validates; anything else of
ours there (a `.part` of a fill cut short, a segment not indexed or whose source changed) is removed.
Ready entries are saved, and beside them the models the index *remembers* (`"resident": false`): those it
named when their segments were lost (a reboot, a cleared /dev/shm, a damaged segment) and that the warm set
has not refilled yet (warmset.py), so a daemon stopped before its refill ended still knows them. `recover`
runs in a worker thread before the loop serves anything; `save` and `forget` run on the loop, and `save`
hands the file's writing to a thread of its own (core/jsonfile.LatestWriter); `saved` waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import HearthError, SourceChanged
from ..core.jsonfile import LatestWriter, read_json
from ..core.sizes import format_size
from . import segments
from .entries import Entry
from .segments import SourceId

log = logging.getLogger("hearth.index")


@dataclass(frozen=True)
class Remembered:
    """A model the index knew whose segment is gone: its identity then, and how it was used."""

    source: SourceId
    hits: int
    last_use: float


class Index:
    def __init__(self, path: Path):
        self.path = path
        self.remembered: dict[str, Remembered] = {}  # by key; never a key of a live entry
        # Not synced to the disk: a fill waits for its index entry (`saved`), and the file needs to outlive
        # only the daemon, which the page cache does; what a power cut loses, the tmpfs lost too (the warm
        # set then starts from the version before, or from nothing).
        self._writer = LatestWriter(path, durable=False)

    def save(self, entries: dict[str, Entry]) -> None:
        doc = {e.key: {"source": e.source.record(), "hits": e.hits, "last_use": e.last_use,
                       "created": e.created, "tensors": e.tensors}
               for e in entries.values() if e.state == "ready"}
        ready = {e.source.path for e in entries.values() if e.state == "ready"}
        for key, r in list(self.remembered.items()):
            if r.source.path in ready:  # filled again (this version or a newer one)
                del self.remembered[key]
            else:
                doc[key] = {"source": r.source.record(), "hits": r.hits, "last_use": r.last_use,
                            "resident": False}
        self._writer.write(doc)

    async def saved(self) -> None:
        """Until what was saved so far is on disk: a fill answers its waiters only once a restarted daemon
        would re-adopt its segment."""
        loop = asyncio.get_running_loop()
        written = loop.create_future()

        def settle() -> None:
            if not written.done():  # (cancelled: its waiter left)
                written.set_result(None)

        def wake() -> None:  # from the writer's thread
            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:  # the loop closed meanwhile (the daemon's end): nobody waits any more
                pass

        self._writer.when_written(wake)
        await written

    def flush(self) -> None:
        """Until what was saved so far is on disk (the daemon's stop)."""
        self._writer.flush()

    def forget(self, key: str | None = None, path: str | None = None) -> None:
        """Drop remembered models by key, by source path, or all (neither given); the next save writes it."""
        for k, r in list(self.remembered.items()):
            if (key is None and path is None) or k == key or r.source.path == path:
                del self.remembered[k]

    def recover(self, pinned: list[str]) -> dict[str, Entry]:
        """Clean up after a previous daemon and re-adopt its valid segments (saved as the new index); what
        the index named and cannot re-adopt is remembered for the warm set."""
        index = read_json(self.path, {}) or {}
        if not isinstance(index, dict):
            index = {}
        keys, parts = segments.list_own()
        for part in parts:
            segments._unlink_quietly(part)
        adopted: dict[str, Entry] = {}
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
            adopted[key] = Entry(
                source, "ready", rec.get("created", time.time()), rec.get("last_use", time.time()),
                hits=int(rec.get("hits", 0)), filled=source.size, tensors=len(header.tensors), fd=fd,
                pinned=source.path in pinned)
            log.info("re-adopted %s (%s)", source.path, format_size(source.size))
        self.remembered = {}
        for key, rec in index.items():
            if key in adopted:
                continue
            try:
                self.remembered[key] = Remembered(SourceId(**rec["source"]), int(rec.get("hits", 0)),
                                                  float(rec.get("last_use", 0.0)))
            except (KeyError, TypeError, ValueError, AttributeError):
                log.info("index record %s is unreadable; forgotten", key)
        self.save(adopted)
        return adopted
