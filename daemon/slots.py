"""Fill slots by priority: a limit on concurrent fills that follows `max_fills` while the daemon runs.

Three priorities, best first: URGENT (a load waits on the fill), PRELOAD (a user's preload, a queued prompt's
prefetch), WARM (the warm set's refill at start). Waiters are let in best priority first, in arrival order
within one. A background fill (PRELOAD, WARM) enters while fewer than `limit()` fills of any kind run and no
better one waits; an urgent fill enters while fewer than `limit()` *urgent* fills run, so background fills
never hold the slots a waited-on fill needs (they pause while it runs instead: fills.py).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

URGENT, PRELOAD, WARM = 0, 1, 2
PRIORITY_NAMES = {URGENT: "urgent", PRELOAD: "preload", WARM: "warm_set"}


class Ticket:
    """One fill's place: its priority (it only rises), whether it is inside, its arrival order."""

    _order = itertools.count()

    def __init__(self, priority: int):
        self.priority = priority
        self.seq = next(self._order)
        self.inside = False
        self._admitted: asyncio.Future | None = None


class Slots:
    """`async with slots.taken(ticket):` waits for the ticket's turn. Loop thread only.

    The limit is read at every admission, so raising `max_fills` lets queued fills start at once (after
    `changed()`) and lowering it lets the running ones finish.
    """

    def __init__(self, limit: Callable[[], int]):
        self._limit = limit
        self.inside: list[Ticket] = []
        self._waiting: list[Ticket] = []

    @asynccontextmanager
    async def taken(self, ticket: Ticket) -> AsyncIterator[None]:
        ticket._admitted = asyncio.get_running_loop().create_future()
        self._waiting.append(ticket)
        self.changed()
        try:
            await ticket._admitted
        except BaseException:
            if ticket in self._waiting:
                self._waiting.remove(ticket)
            elif ticket.inside:  # admitted and cancelled in the same turn of the loop
                self._leave(ticket)
            raise
        try:
            yield
        finally:
            self._leave(ticket)

    def urgent_inside(self) -> int:
        return sum(t.priority == URGENT for t in self.inside)

    def _leave(self, ticket: Ticket) -> None:
        ticket.inside = False
        self.inside.remove(ticket)
        self.changed()

    def changed(self) -> None:
        """Let in whoever may enter now (a slot freed, the limit changed, a waiter's priority rose)."""
        limit = self._limit()
        for t in sorted(self._waiting, key=lambda t: (t.priority, t.seq)):
            running = self.urgent_inside() if t.priority == URGENT else len(self.inside)
            if running >= limit:
                break  # nobody after a blocked waiter may pass it
            self._waiting.remove(t)
            self.inside.append(t)
            t.inside = True
            if t._admitted is not None:  # set by admit() before it queues the ticket
                t._admitted.set_result(None)
