"""``answers()``: whether the store answers a ping, on every backend; False on a fault, never raised."""

from __future__ import annotations

import asyncio

import pytest

from taskplatform.errors import StoreError
from taskplatform.store import BaseTaskStore
from taskplatform.store import base as store_base


async def test_an_open_store_answers(store: BaseTaskStore) -> None:
    assert await store.answers() is True


async def test_a_store_whose_ping_fails_does_not_answer(
    store: BaseTaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing_ping() -> None:
        raise StoreError("connection refused")

    monkeypatch.setattr(store, "ping", failing_ping)
    assert await store.answers() is False


async def test_a_ping_that_hangs_counts_as_no_answer_after_the_timeout(
    store: BaseTaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def hanging_ping() -> None:
        await asyncio.sleep(60)

    monkeypatch.setattr(store, "ping", hanging_ping)
    monkeypatch.setattr(store_base, "PING_TIMEOUT_SECONDS", 0.05)
    assert await asyncio.wait_for(store.answers(), 5) is False


async def test_cancelling_answers_propagates(store: BaseTaskStore, monkeypatch: pytest.MonkeyPatch) -> None:
    started = asyncio.Event()

    async def slow_ping() -> None:
        started.set()
        await asyncio.sleep(60)

    monkeypatch.setattr(store, "ping", slow_ping)
    asking = asyncio.create_task(store.answers())
    await started.wait()
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
