"""What the daemon did, kept: its counters and a bounded history of its events, in activity.json.

The panel shows both, and neither may start from zero because a page was reloaded, a sidebar tab closed or
the daemon restarted (each model's own hits live in the index, index.py, and survive a restart; the
totals must too). The status document keeps `stats`, this daemon's own counts since it started (what
`hearth status` and the tests of a restart read: a re-adopted model is no fill), beside `totals`, the
same counts since the first start: every count into `stats` is added to `totals` as it happens. Every
event the bus emits passes through `record` first (events.py): cache changes, acquires, pins, settings
and VRAM plans are kept (fill progress is not: the segment's state says it),
each with a sequence number that grows across restarts, so a viewer that reconnects merges the history
with what it already saw without doubles. Written at most every SAVE_S on the loop (a daemon killed
outright loses at most that much) and at stop. Loop thread only.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from pathlib import Path
from typing import Any

from ..core.jsonfile import LatestWriter, read_json

COUNTERS = ("hits", "misses", "fills", "evictions")
RECORDED = frozenset({"cache", "strategy", "config"})
MAX_EVENTS = 200
SAVE_S = 2.0


class Activity:
    def __init__(self, path: Path):
        self.path = path
        doc = read_json(path, {})
        doc = doc if isinstance(doc, dict) else {}
        stored = doc.get("totals")
        stored = stored if isinstance(stored, dict) else {}
        self.totals: dict[str, int] = {k: _count(stored.get(k)) for k in COUNTERS}
        # One dict for the daemon's life: fills.py and budget.py count into it directly.
        self.stats = Counters(self.totals)
        since = doc.get("since")
        self.since = since if isinstance(since, (int, float)) else time.time()
        kept = [e for e in doc.get("events") or [] if isinstance(e, dict) and isinstance(e.get("seq"), int)]
        self.events: deque[dict] = deque(kept[-MAX_EVENTS:], maxlen=MAX_EVENTS)
        self.seq = max((e["seq"] for e in self.events), default=0)
        self._timer: asyncio.TimerHandle | None = None
        self._writer = LatestWriter(path)  # the write and its fsync off the loop, as for index.json

    def record(self, event: dict[str, Any]) -> None:
        """Keep `event` (numbered in place, so viewers get the same number) if it is one the panel lists."""
        if event.get("type") not in RECORDED:
            return
        self.seq += 1
        event["seq"] = self.seq
        self.events.append(event)
        self._save_soon()

    def history(self, after: int = 0) -> list[dict]:
        """The kept events, oldest first; only those numbered above `after` when given."""
        return [e for e in self.events if e["seq"] > after]

    def document(self, after: int = 0) -> dict:
        return {"stats": dict(self.stats), "totals": dict(self.totals), "since": self.since, "seq": self.seq,
                "events": self.history(after)}

    def _save_soon(self) -> None:
        if self._timer is not None:
            return
        try:
            self._timer = asyncio.get_running_loop().call_later(SAVE_S, self.save)
        except RuntimeError:  # not on the loop (a direct call in a test): now
            self.save()

    def save(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # copies: the writer's thread serialises them while the loop goes on counting and recording
        self._writer.write({"totals": dict(self.totals), "since": self.since, "events": list(self.events)})

    def flush(self) -> None:
        """Until what was saved so far is on disk (the daemon's stop); a full disk costs the history only."""
        self._writer.flush()


class Counters(dict):
    """This daemon's counts; each change is added to `totals` as well (`stats["fills"] += 1` counts both)."""

    def __init__(self, totals: dict[str, int]):
        super().__init__(dict.fromkeys(totals, 0))
        self._totals = totals

    def __setitem__(self, key: str, value: int) -> None:
        self._totals[key] = self._totals.get(key, 0) + value - self.get(key, 0)
        super().__setitem__(key, value)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
