"""index.json: what the segments in the tmpfs are, so that a restarted daemon re-adopts them, not refills.

Segments outlive the daemon (a crash, an upgrade). At start, one of ours is re-adopted only when the index
names it, its source file is unchanged (same identity, same key) and it still validates; anything else of
ours there (a `.part` of a fill cut short, a segment not indexed or whose source changed) is removed.
Only ready entries are saved. `recover` runs in a worker thread before the loop serves anything; `save`
runs on the loop.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

from ..core.errors import HearthError, SourceChanged
from ..core.jsonfile import read_json, write_json_atomic
from ..core.sizes import format_size
from . import segments
from .entries import Entry
from .segments import SourceId

log = logging.getLogger("hearth.index")


class Index:
    def __init__(self, path: Path):
        self.path = path

    def save(self, entries: dict[str, Entry]) -> None:
        doc = {e.key: {"source": asdict(e.source), "hits": e.hits, "last_use": e.last_use,
                       "created": e.created, "tensors": e.tensors}
               for e in entries.values() if e.state == "ready"}
        write_json_atomic(self.path, doc)

    def recover(self, pinned: list[str]) -> dict[str, Entry]:
        """Clean up after a previous daemon and re-adopt its valid segments (saved as the new index)."""
        index = read_json(self.path, {}) or {}
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
        self.save(adopted)
        return adopted
