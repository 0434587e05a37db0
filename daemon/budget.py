"""The RAM budget: how much the segments may take, and which unheld segments to evict to make room."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import psutil

from ..core.home import shm_space

from ..core.sizes import parse_size


class Evictable(Protocol):
    size: int
    last_use: float

    @property
    def evictable(self) -> bool: ...


def shm_total() -> int:
    try:
        return shm_space()[0]
    except OSError:
        return 0


def shm_free() -> int:
    try:
        return shm_space()[1]
    except OSError:
        return 0


def default_budget() -> int:
    """Half the machine's RAM or 80 % of the tmpfs, whichever is smaller (DESIGN section 5)."""
    return min(psutil.virtual_memory().total // 2, shm_total() * 4 // 5)


def resolve_budget(setting: str | int | None) -> int:
    """Bytes for a budget setting ('12G', '40%' of RAM, a byte count, or None for the default)."""
    if setting in (None, "", "auto"):
        return default_budget()
    return parse_size(setting, total=psutil.virtual_memory().total)


def choose_victims(entries: Iterable[Evictable], used: int, need: int, budget: int) -> list | None:
    """Least recently used evictable entries whose removal makes `need` fit; None if nothing can."""
    if used + need <= budget:
        return []
    victims, freed = [], 0
    for e in sorted((e for e in entries if e.evictable), key=lambda e: e.last_use):
        victims.append(e)
        freed += e.size
        if used - freed + need <= budget:
            return victims
    return None
