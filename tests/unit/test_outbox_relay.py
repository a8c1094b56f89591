"""The outbox relay over the in-memory store and a fake publisher: what it publishes, what it leaves
(entries within their grace, a publisher not ready), what a failed publish leaves behind, and when
its loop goes straight on to another pass."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import pytest

from taskplatform.errors import BrokerError
from taskplatform.models import BackgroundTask, OutboxStatus, TaskStatus, utcnow
from taskplatform.outbox import OutboxRelay
from taskplatform.store import create_store
from taskplatform.store.memory import MemoryTaskStore
from taskplatform.testing.broker import FakePublisher
from tests.store.helpers import make_task


class RelayPublisher:
    """What the relay needs of the publisher: ``ready`` (a property on the real one) and
    ``publish_tasks``; publishes go to ``fake``. ``refuse`` names tasks whose publish fails."""

    def __init__(self) -> None:
        self.fake = FakePublisher()
        self.ready = True
        self.refuse: set[str] = set()
        self.calls = 0

    async def publish_tasks(self, tasks: Sequence[BackgroundTask]) -> list[BaseException | None]:
        self.calls += 1
        results: list[BaseException | None] = []
        for task in tasks:
            if task.id in self.refuse:
                results.append(BrokerError("no route to the queue (fake)"))
            else:
                results.extend(await self.fake.publish_tasks([task]))
        return results

    @property
    def published_ids(self) -> list[str | None]:
        return [p.task_id for p in self.fake.published]


@pytest.fixture
async def store() -> AsyncIterator[MemoryTaskStore]:
    s = create_store("memory://")
    assert isinstance(s, MemoryTaskStore)
    await s.open()
    yield s
    await s.close()


def _relay(store: MemoryTaskStore, publisher: RelayPublisher, **options: Any) -> OutboxRelay:
    return OutboxRelay(store, publisher, owner="relay-1", **options)  # type: ignore[arg-type]


async def _pending(store: MemoryTaskStore, *, age: float = 60.0) -> BackgroundTask:
    task = make_task(created_at=utcnow() - timedelta(seconds=age))
    await store.create(task)
    return task


async def test_the_relay_publishes_entries_past_their_grace_and_marks_them_published(
    store: MemoryTaskStore,
) -> None:
    old = await _pending(store, age=60)
    young = await _pending(store, age=0)
    publisher = RelayPublisher()
    relay = _relay(store, publisher, grace=10)

    assert await relay.run_once() == 1

    assert publisher.published_ids == [old.id]
    assert relay.published_total == 1
    got_old, got_young = await store.get(old.id), await store.get(young.id)
    assert got_old is not None and got_old.outbox.status is OutboxStatus.PUBLISHED
    assert got_young is not None and got_young.outbox.status is OutboxStatus.PENDING


async def test_a_relay_whose_publisher_is_not_ready_leases_nothing(store: MemoryTaskStore) -> None:
    task = await _pending(store)
    publisher = RelayPublisher()
    publisher.ready = False

    assert await _relay(store, publisher).run_once() == 0

    got = await store.get(task.id)
    assert publisher.calls == 0
    assert got is not None and got.outbox.lease_owner is None and got.outbox.status is OutboxStatus.PENDING


async def test_a_pass_with_nothing_pending_publishes_nothing(store: MemoryTaskStore) -> None:
    publisher = RelayPublisher()
    assert await _relay(store, publisher).run_once() == 0
    assert publisher.calls == 0


async def test_a_failed_publish_is_recorded_and_left_pending_for_the_next_pass(
    store: MemoryTaskStore, caplog: pytest.LogCaptureFixture
) -> None:
    good = await _pending(store)
    bad = await _pending(store)
    publisher = RelayPublisher()
    publisher.refuse = {bad.id}
    relay = _relay(store, publisher, interval=0.2)

    assert await relay.run_once() == 1

    got_bad = await store.get(bad.id)
    got_good = await store.get(good.id)
    assert got_good is not None and got_good.outbox.status is OutboxStatus.PUBLISHED
    assert got_bad is not None and got_bad.outbox.status is OutboxStatus.PENDING
    assert got_bad.outbox.attempts == 1
    assert got_bad.outbox.last_error == "BrokerError: no route to the queue (fake)"
    assert f"relay could not publish task {bad.id} (again in 0.2s)" in caplog.text
    publisher.refuse = set()
    assert await relay.run_once() == 0  # its first wait (one period) has not passed
    await asyncio.sleep(0.3)
    # the wait is over: the next pass publishes it once the broker takes it
    assert await relay.run_once() == 1
    assert publisher.published_ids == [good.id, bad.id]
    assert relay.published_total == 2


def test_the_wait_after_a_failed_publish_doubles_from_the_period_up_to_its_cap() -> None:
    relay = OutboxRelay(None, None, owner="r", interval=1.0, max_backoff=60.0)  # type: ignore[arg-type]
    assert [relay.backoff(n) for n in (1, 2, 3, 6, 7, 10_000)] == [1.0, 2.0, 4.0, 32.0, 60.0, 60.0]


async def test_an_entry_that_keeps_failing_is_taken_again_only_after_its_doubled_wait(
    store: MemoryTaskStore,
) -> None:
    task = make_task(created_at=utcnow() - timedelta(seconds=600))
    task.outbox.attempts = 4  # four publishes of it have failed before
    await store.create(task)
    publisher = RelayPublisher()
    publisher.refuse = {task.id}
    relay = _relay(store, publisher, interval=1.0, max_backoff=60.0)
    before = store.now()

    assert await relay.run_once() == 0

    got = await store.get(task.id)
    assert got is not None and got.outbox.attempts == 5 and got.outbox.lease_until is not None
    wait = (got.outbox.lease_until - before).total_seconds()
    assert 16.0 <= wait < 17.0  # the fifth failure waits 2**4 periods
    publisher.refuse = set()
    assert await relay.run_once() == 0  # nothing is taken within the wait, nothing sent
    assert publisher.calls == 1 and publisher.published_ids == []


async def test_an_entry_leased_by_another_relay_waits_for_its_lease_to_lapse(store: MemoryTaskStore) -> None:
    task = await _pending(store)
    other = await store.claim_pending_outbox(
        owner="relay-2",
        limit=10,
        lease_until=store.now() + timedelta(seconds=0.2),
        created_before=utcnow(),
    )
    assert [t.id for t in other] == [task.id]
    publisher = RelayPublisher()
    relay = _relay(store, publisher)

    assert await relay.run_once() == 0  # relay-2's lease is live

    await asyncio.sleep(0.3)  # relay-2 died: its lease lapses, and this relay takes the entry over
    assert await relay.run_once() == 1
    got = await store.get(task.id)
    assert got is not None and got.outbox.status is OutboxStatus.PUBLISHED
    assert publisher.published_ids == [task.id]


async def test_a_full_batch_is_followed_at_once_by_another_pass(store: MemoryTaskStore) -> None:
    for _ in range(5):
        await _pending(store)
    publisher = RelayPublisher()
    relay = _relay(store, publisher, batch_size=2, interval=30.0)
    stop = asyncio.Event()
    runner = asyncio.create_task(relay.run(stop))
    try:
        # 2 + 2 + 1: the third pass is short, and only then does the loop wait its 30 s
        for _ in range(100):
            if relay.published_total == 5:
                break
            await asyncio.sleep(0.01)
        assert relay.published_total == 5 and publisher.calls == 3
    finally:
        stop.set()
        await asyncio.wait_for(runner, timeout=5)


async def test_a_store_outage_fails_the_pass_and_the_loop_goes_on(store: MemoryTaskStore) -> None:
    await _pending(store)
    publisher = RelayPublisher()
    relay = _relay(store, publisher, interval=0.01)
    store.available = False
    stop = asyncio.Event()
    runner = asyncio.create_task(relay.run(stop))
    try:
        await asyncio.sleep(0.05)
        assert relay.published_total == 0
        store.available = True
        for _ in range(200):
            if relay.published_total == 1:
                break
            await asyncio.sleep(0.01)
        assert relay.published_total == 1
    finally:
        stop.set()
        await asyncio.wait_for(runner, timeout=5)


async def test_a_pass_whose_every_publish_fails_marks_nothing_published(
    store: MemoryTaskStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taskplatform.outbox")
    task = await _pending(store)
    publisher = RelayPublisher()
    publisher.refuse = {task.id}
    relay = _relay(store, publisher)

    assert await relay.run_once() == 0

    got = await store.get(task.id)
    assert got is not None and got.outbox.status is OutboxStatus.PENDING and got.outbox.attempts == 1
    assert relay.published_total == 0
    assert "outbox relay published" not in caplog.text


async def test_the_fake_publisher_told_to_fail_is_not_ready_and_the_relay_waits(
    store: MemoryTaskStore,
) -> None:
    task = await _pending(store)
    publisher = FakePublisher()
    publisher.fail()
    assert publisher.ready is False  # a property, as on the real publisher

    assert await OutboxRelay(store, publisher, owner="relay-1").run_once() == 0  # type: ignore[arg-type]

    publisher.recover()
    assert publisher.ready is True
    assert await OutboxRelay(store, publisher, owner="relay-1").run_once() == 1  # type: ignore[arg-type]
    assert [p.task_id for p in publisher.published] == [task.id]


async def test_the_entry_of_a_task_that_has_ended_is_closed_unpublished(store: MemoryTaskStore) -> None:
    ended = await _pending(store)
    waiting = await _pending(store)
    dead = await store.mark_dead_letter(ended.id, error=None)
    assert (
        dead is not None
        and dead.status is TaskStatus.DEAD_LETTER
        and dead.outbox.status is OutboxStatus.PENDING
    )
    publisher = RelayPublisher()
    relay = _relay(store, publisher)

    assert await relay.run_once() == 1

    assert publisher.published_ids == [waiting.id]  # the ended one is never sent
    closed = await store.get(ended.id)
    assert closed is not None and closed.outbox.status is OutboxStatus.PUBLISHED
    assert await relay.run_once() == 0 and publisher.calls == 1  # and never taken again


async def test_a_batch_of_ended_tasks_alone_publishes_nothing(store: MemoryTaskStore) -> None:
    ended = await _pending(store)
    await store.mark_dead_letter(ended.id, error=None)
    publisher = RelayPublisher()
    assert await _relay(store, publisher).run_once() == 0
    assert publisher.calls == 0
    closed = await store.get(ended.id)
    assert closed is not None and closed.outbox.status is OutboxStatus.PUBLISHED
