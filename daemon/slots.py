"""A limit on concurrent fills that follows the `max_fills` setting while the daemon runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Slots:
    """`async with slots:` waits until fewer than `limit()` holders are inside.

    Unlike asyncio.Semaphore the limit is read at every entry, so raising `max_fills` lets queued fills
    start at once (after `changed()`) and lowering it lets the running ones finish. Loop thread only.
    """

    def __init__(self, limit: Callable[[], int]):
        self._limit = limit
        self._inside = 0
        self._waiters: list[asyncio.Future] = []

    async def __aenter__(self) -> None:
        while self._inside >= self._limit():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)
        self._inside += 1

    async def __aexit__(self, *exc) -> None:
        self._inside -= 1
        self.changed()

    def changed(self) -> None:
        """Wake the waiters to look at the limit again (a slot freed, or the limit changed)."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
