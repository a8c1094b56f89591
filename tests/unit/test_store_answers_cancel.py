"""``store.answers()`` passes a cancellation on, even one that arrives as the ping ends.

A loop that holds a message through a store outage asks ``answers()`` between tries; if the
ping swallowed the cancellation (``asyncio.wait_for`` on 3.11 returns the inner result when the
inner ping is already done), stopping that consumer would not stop it."""

from __future__ import annotations

import asyncio

import pytest

from taskplatform.errors import StoreError
from taskplatform.store.memory import MemoryTaskStore


class RacingPing(MemoryTaskStore):
    """A store whose ping waits for ``gate`` and then fails."""

    def __init__(self) -> None:
        super().__init__("memory://")
        self.gate = asyncio.Event()

    async def ping(self) -> None:
        await self.gate.wait()
        raise StoreError("the store went away")


async def test_a_cancellation_arriving_as_the_ping_fails_is_not_swallowed() -> None:
    store = RacingPing()
    asking = asyncio.create_task(store.answers())
    await asyncio.sleep(0)  # asking waits in the ping
    store.gate.set()  # the ping ends (fails) ...
    asking.cancel()  # ... in the same turn as the cancellation
    with pytest.raises(asyncio.CancelledError):
        await asking


async def test_a_failing_ping_is_answered_false() -> None:
    store = RacingPing()
    store.gate.set()
    assert await store.answers() is False
