"""The coalescer: concurrent callers share a flush; callers that gave up are never flushed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from taskplatform.batching import Coalescer


class Gate:
    """A flush that records its batches and holds the first one until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()

    async def flush(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        if len(self.batches) == 1:
            await self.release.wait()
        return [item * 10 for item in items]


async def test_callers_arriving_during_a_flush_go_together_in_the_next_one() -> None:
    gate = Gate()
    coalescer: Coalescer[int, int] = Coalescer(gate.flush)
    first = asyncio.create_task(coalescer.submit(1))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(coalescer.submit(n)) for n in (2, 3, 4)]
    await asyncio.sleep(0)
    gate.release.set()
    assert await first == 10
    assert [await t for t in rest] == [20, 30, 40]
    assert gate.batches == [[1], [2, 3, 4]]


async def test_a_batch_whose_every_caller_was_cancelled_is_not_flushed_and_later_callers_are() -> None:
    gate = Gate()
    coalescer: Coalescer[int, int] = Coalescer(gate.flush, max_batch=2)
    first = asyncio.create_task(coalescer.submit(1))
    await asyncio.sleep(0)
    gone = [asyncio.create_task(coalescer.submit(n)) for n in (2, 3)]
    await asyncio.sleep(0)
    for task in gone:
        task.cancel()
    await asyncio.sleep(0)
    gate.release.set()
    assert await first == 10
    for task in gone:
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.sleep(0)
    assert gate.batches == [[1]]  # the cancelled pair made no flush of its own
    assert await coalescer.submit(5) == 50  # and the coalescer still serves
    assert gate.batches == [[1], [5]]


async def test_a_flush_answering_the_wrong_number_of_results_fails_its_callers() -> None:
    async def short(items: Sequence[int]) -> list[int]:
        return list(items)[:-1]

    coalescer: Coalescer[int, int] = Coalescer(short)
    with pytest.raises(RuntimeError, match="1 results for 2 items"):
        first = asyncio.create_task(coalescer.submit(1))
        second = asyncio.create_task(coalescer.submit(2))
        await asyncio.gather(first, second)
