"""The worker's priority gate: a freed slot goes to the highest level waiting."""

from __future__ import annotations

import asyncio

import pytest

from taskplatform.worker.dispatch import GateClosed, PriorityGate


async def test_a_freed_slot_goes_to_the_highest_level_then_first_come_first_served() -> None:
    gate = PriorityGate(1)
    assert gate.try_acquire()
    order: list[str] = []

    async def wait(name: str, level: int) -> None:
        await gate.acquire(level)
        order.append(name)

    waiters = [
        asyncio.create_task(wait(name, level))
        for name, level in [("low-1", 0), ("mid", 5), ("low-2", 0), ("high", 9), ("mid-2", 5)]
    ]
    await asyncio.sleep(0)
    assert gate.waiting == 5 and not gate.try_acquire()
    for _ in waiters:
        gate.release()
        await asyncio.sleep(0)
    await asyncio.gather(*waiters)
    assert order == ["high", "mid", "mid-2", "low-1", "low-2"]


async def test_a_waiter_that_gives_up_does_not_take_a_slot_with_it() -> None:
    gate = PriorityGate(1)
    await gate.acquire(0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(gate.acquire(9), 0.01)
    gate.release()  # nobody waits any more: the slot is free again
    assert gate.try_acquire()


async def test_a_slot_granted_to_a_cancelled_waiter_is_passed_on() -> None:
    gate = PriorityGate(1)
    await gate.acquire(0)
    first = asyncio.create_task(gate.acquire(5))
    second = asyncio.create_task(gate.acquire(1))
    await asyncio.sleep(0)
    gate.release()  # granted to `first` ...
    first.cancel()  # ... which is cancelled before it runs
    await asyncio.sleep(0)
    await asyncio.wait_for(second, 1)  # the slot reached the next waiter
    assert not gate.try_acquire()


async def test_closing_wakes_every_waiter_and_refuses_new_ones() -> None:
    gate = PriorityGate(1)
    await gate.acquire(0)
    waiters = [asyncio.create_task(gate.acquire(level)) for level in (0, 9)]
    await asyncio.sleep(0)
    gate.close()
    for waiter in waiters:
        with pytest.raises(GateClosed):
            await waiter
    with pytest.raises(GateClosed):
        await gate.acquire(3)
    assert not gate.try_acquire()
