"""State files as JSON: written atomically, read as caches of facts (a missing or broken file is no file)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("hearth.state")


def write_json_atomic(path: Path, data: Any, mode: int = 0o600, durable: bool = True) -> None:
    """Write JSON to a temporary file beside `path`, then rename it over `path`. The rename alone is
    atomic for every reader and survives the writer's death; `durable` also syncs the file first, for a
    power cut."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_json(path: Path, default: Any = None) -> Any:
    """Read a JSON file; a missing or unreadable file gives `default`."""
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError, OSError):
        return default


class LatestWriter:
    """Writes the newest document given to it to `path`, atomically, on a thread of its own.

    The daemon's state files change on its event loop, and an fsync there (a millisecond on this machine's
    SSD, tens of milliseconds on a disk) would stall every request meanwhile: measured under load, the
    index's fsync took a sixth of the loop's time. Documents given while one is written coalesce into the
    newest, and writes never overtake each other. `flush` waits until what was given so far is written
    (and synced, where `durable`).
    """

    def __init__(self, path: Path, mode: int = 0o600, durable: bool = True):
        self.path, self.mode, self.durable = path, mode, durable
        self._cond = threading.Condition()
        self._doc: Any = None
        self._given = self._done = 0
        self._started = False
        self._callbacks: list[tuple[int, Callable[[], None]]] = []  # (document number, what to call then)

    def write(self, doc: Any) -> None:
        with self._cond:
            self._doc, self._given = doc, self._given + 1
            if not self._started:  # one thread for the writer's life, started at its first document
                self._started = True
                threading.Thread(target=self._run, name="hearth-state-writer", daemon=True).start()
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        with self._cond:
            given = self._given
            return self._cond.wait_for(lambda: self._done >= given, timeout)

    def when_written(self, callback: Callable[[], None]) -> None:
        """Call `callback` once what was given so far is written: at once, or from the writer's thread (an
        event loop waits so with no thread of its own blocked in `flush`)."""
        with self._cond:
            if self._done < self._given:
                self._callbacks.append((self._given, callback))
                return
        callback()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._done != self._given)
                doc, number = self._doc, self._given
            try:
                write_json_atomic(self.path, doc, self.mode, self.durable)
            except (OSError, TypeError, ValueError) as e:  # a full disk costs this state file, never the daemon
                log.warning("could not write %s: %s", self.path, e)
            with self._cond:
                self._done = number
                self._cond.notify_all()
                due = [cb for n, cb in self._callbacks if n <= number]
                self._callbacks = [(n, cb) for n, cb in self._callbacks if n > number]
            for cb in due:
                cb()
