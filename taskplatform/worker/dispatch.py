"""Strict priority among the deliveries a worker holds: which one runs next when all slots are busy."""

from __future__ import annotations

import asyncio
import heapq
import itertools


class GateClosed(Exception):
    """The gate was closed (the worker is stopping): the waiter must hand its message back."""


class PriorityGate:
    """Lets at most ``slots`` holders in at once; when full, a freed slot goes to the waiter
    with the highest level, first come first served within a level.

    A worker consumes each priority level of a queue group from its own quorum queue, so
    deliveries of every level arrive side by side; the gate is what makes a level-9 task
    start before the level-0 ones that arrived first.
    """

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self._free = slots
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []  # (-level, seq, future)
        self._seq = itertools.count()
        self._closed = False

    @property
    def waiting(self) -> int:
        """How many holders wait for a slot."""
        return sum(1 for *_, future in self._waiters if not future.done())

    def try_acquire(self) -> bool:
        """Take a free slot without waiting; False when none is free (or the gate is closed)."""
        if self._closed or self._free == 0:
            return False
        self._free -= 1
        return True

    async def acquire(self, level: int) -> None:
        """Wait for a slot. Raises GateClosed once :meth:`close` was called."""
        if self._closed:
            raise GateClosed
        # A free slot means nobody waits: release() hands slots to live waiters first.
        if self._free > 0:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (-level, next(self._seq), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release()  # granted, then cancelled before it was used: pass it on
            raise

    def release(self) -> None:
        """Give a slot back: to the best waiter, or to the pool."""
        while self._waiters:
            *_, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)
                return
        self._free += 1

    def close(self) -> None:
        """Refuse new holders and wake every waiter with GateClosed (slots held stay held)."""
        self._closed = True
        while self._waiters:
            *_, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_exception(GateClosed())
