"""The RAM budget and eviction: how much the segments may take, and which unheld ones go to make room.

Eviction takes the least recently used segments that are ready, unpinned and unheld; a fill may rank them
further (fills.py: what a queued prompt names goes last for a load, never for a background fill). Loop
thread only: a fill makes its room and registers its entry in one step on the loop (no await between), so
two fills can never both count on the same free bytes. (room.py then keeps the tmpfs's pages promised to
each fill.) Used drops the moment a segment is evicted; the tmpfs gets its pages back when the reaper has
freed them, off the loop (reaper.py), and wait_for_frees keeps a fill from reading the tmpfs before that.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import psutil

from ..core.errors import OverBudget, ShmFull
from ..core.home import shm_dir, shm_space
from ..core.sizes import format_size, parse_size
from .entries import Entries, Entry
from .segments import SourceId


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


@functools.cache
def ram_total() -> int:
    """The machine's RAM, read once: every fill and status asks for the budget, and psutil parses
    /proc/meminfo for it each time."""
    return psutil.virtual_memory().total


def default_budget() -> int:
    """Half the machine's RAM or 80 % of the tmpfs, whichever is smaller (DESIGN section 5)."""
    return min(ram_total() // 2, shm_total() * 4 // 5)


def resolve_budget(setting: str | int | None) -> int:
    """Bytes for a budget setting ('12G', '40%' of RAM, a byte count, or None for the default)."""
    if setting in (None, "", "auto"):
        return default_budget()
    return parse_size(setting, total=ram_total())


Rank = Callable[[Entry], "int | None"]  # an evictable entry's turn: lower ranks go first; None: never


def choose_victims(entries: Iterable[Entry], used: int, need: int, budget: int,
                   rank: Rank | None = None) -> list[Entry] | None:
    """Evictable entries, lowest rank and least recently used first, whose removal makes `need` fit; None if
    nothing can."""
    if used + need <= budget:
        return []
    ranked = [(r, e) for e in entries if e.evictable and (r := rank(e) if rank else 0) is not None]
    victims, freed = [], 0
    for _, e in sorted(ranked, key=lambda re: (re[0], re[1].last_use)):
        victims.append(e)
        freed += e.size
        if used - freed + need <= budget:
            return victims
    return None


async def wait_for_frees(entries: Entries, need: int) -> None:
    """Before the tmpfs's free space is read or taken for `need` bytes: while it shows less and evicted
    segments' pages are still being freed (the tmpfs counts them until they are), wait for those frees.

    A fill calls it before make_room, whose figures then hold, and again before it allocates the room
    make_room found, part of which may be its victims' pages on their way back (reaper.py).
    """
    while entries.reaper.freeing() and shm_free() < need:
        await entries.reaper.freed()


def make_room(entries: Entries, source: SourceId, budget: int, stats: dict[str, int],
              rank: Rank | None = None) -> None:
    """Evict what `source` needs, within the budget and in the tmpfs; OverBudget or ShmFull if it cannot.

    Call it right after wait_for_frees (no await between). Counts the evictions in `stats` (also those done
    before a ShmFull: they happened).
    """
    need = source.size
    if need > budget:
        raise OverBudget(f"{source.path} needs {format_size(need)} but the budget is "
                         f"{format_size(budget)}; raise it with `hearth config budget SIZE`")
    used = entries.used()
    victims = choose_victims(entries.values(), used, need, budget, rank)
    if victims is None:
        raise OverBudget(f"{source.path} needs {format_size(need)}; {format_size(used)} of the "
                         f"{format_size(budget)} budget is held or pinned")
    # The tmpfs is shared with the rest of the machine (and a budget may exceed it): when its free space
    # is short, unheld segments make room there too, least recently used first, before refusing.
    free = shm_free()
    room = used + free
    if room < budget:
        victims = choose_victims(entries.values(), used, need, room, rank)
        if victims is None:
            raise ShmFull(f"{shm_dir()} has {format_size(free)} free, {source.path} needs "
                          f"{format_size(need)}, and the cached models there are held or pinned; "
                          f"enlarge it (Docker: --shm-size) or lower the budget")
    for v in victims:
        entries.drop(v, "evicted (LRU)")
        stats["evictions"] += 1
        if v.state != "stale":  # (not taken by a client since it was chosen) its pages are on their way back
            free += v.size
    if free < need:
        raise ShmFull(f"{shm_dir()} has {format_size(free)} free, {source.path} needs "
                      f"{format_size(need)}; enlarge it (Docker: --shm-size) or lower the budget")


def shrink_to_budget(entries: Entries, budget: int) -> None:
    """After the budget is lowered: evict unheld segments, least recently used first, until it holds."""
    for v in choose_victims(entries.values(), entries.used(), 0, budget) or []:
        entries.drop(v, "evicted (budget lowered)")
