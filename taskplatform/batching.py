"""Natural batching: concurrent callers share one round trip without waiting for a timer."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Groups concurrent ``submit`` calls into calls of ``flush(items) -> results``.

    The first caller flushes at once (no added latency when idle); callers arriving while
    a flush is in flight wait for it and then go together in the next one, up to
    ``max_batch`` items. ``flush`` returns one result per item, in order; if it raises,
    every caller of that batch gets the exception.
    """

    def __init__(
        self, flush: Callable[[Sequence[T]], Awaitable[Sequence[R]]], *, max_batch: int = 500
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._runner is None or self._runner.done():
            # A clean context: the drain serves many callers, so it carries none's task context.
            self._runner = asyncio.create_task(self._drain(), context=contextvars.Context())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            # A caller cancelled while it waited (its client went away) is not flushed: what it
            # was told (nothing done) stays true.
            live = [entry for entry in self._pending if not entry[1].done()]
            batch, self._pending = live[: self._max_batch], live[self._max_batch :]
            if not batch:
                continue
            items = [item for item, _ in batch]
            try:
                results = await self._flush(items)
                if len(results) != len(items):
                    raise RuntimeError(f"flush returned {len(results)} results for {len(items)} items")
            except BaseException as exc:  # hand every waiter the failure, including cancellation
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
