"""Store contract, every backend: the outbox (leases, a failed publish, two relays, a claim
marking it published) and the backlog it reports."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from taskplatform.models import OutboxStatus, TaskStatus, utcnow
from taskplatform.store import BaseTaskStore
from taskplatform.store.base import ClaimRequest
from tests.store.helpers import NODE, claim, close_in_time, make_task


async def test_outbox_claim_leases_pending_entries_until_published(store: BaseTaskStore) -> None:
    old = make_task(created_at=utcnow() - timedelta(seconds=30))
    fresh = make_task()
    await store.create_many([old, fresh])
    cutoff = utcnow() - timedelta(seconds=10)
    short_lease = utcnow() + timedelta(milliseconds=300)
    first = await store.claim_pending_outbox(
        owner="r1", limit=10, lease_until=short_lease, created_before=cutoff
    )
    assert [t.id for t in first] == [old.id]  # the fresh one is still within its grace period
    assert first[0].outbox.lease_owner == "r1"
    lease = utcnow() + timedelta(seconds=30)
    assert (
        await store.claim_pending_outbox(owner="r2", limit=10, lease_until=lease, created_before=cutoff) == []
    )
    await store.record_publish_failure(old.id, "broker down")
    got = await store.get(old.id)
    assert got is not None and got.outbox.attempts == 1 and got.outbox.last_error == "broker down"
    await asyncio.sleep(0.4)  # r1's lease lapses: the entry is claimable again
    again = await store.claim_pending_outbox(owner="r2", limit=10, lease_until=lease, created_before=cutoff)
    assert [t.id for t in again] == [old.id] and again[0].outbox.lease_owner == "r2"
    # a late mark of r1's publish (or the submitter's) leaves r2's entry alone; r2's own marks it
    assert await store.mark_published([old.id], owner="r1") == 0
    assert await store.mark_published([old.id, fresh.id]) == 1  # fresh: nobody leased it
    assert await store.mark_published([old.id], owner="r2") == 1
    assert await store.mark_published([old.id], owner="r2") == 0
    assert (
        await store.claim_pending_outbox(owner="r3", limit=10, lease_until=lease, created_before=utcnow())
        == []
    )
    got = await store.get(old.id)
    assert (
        got is not None
        and got.outbox.status is OutboxStatus.PUBLISHED
        and got.outbox.published_at is not None
    )


async def test_a_failed_publish_frees_the_entry_for_the_relay_but_not_for_a_late_mark(
    store: BaseTaskStore,
) -> None:
    task = make_task(created_at=utcnow() - timedelta(seconds=60))
    await store.create(task)
    hold = utcnow() + timedelta(seconds=30)
    changed = await store.amend_queued(task.id, priority=5, publish_hold_until=hold, owner="api-1")
    assert changed is not None and changed.outbox.lease_owner == "api-1"
    await store.record_publish_failure(task.id, "broker down")  # the new message did not go out
    assert await store.mark_published([task.id]) == 0  # the submission's late mark of the old one
    got = await store.get(task.id)
    assert got is not None and got.outbox.status is OutboxStatus.PENDING and got.outbox.attempts == 1
    lease = utcnow() + timedelta(seconds=30)
    relayed = await store.claim_pending_outbox(
        owner="relay", limit=10, lease_until=lease, created_before=utcnow()
    )
    assert [t.id for t in relayed] == [task.id]  # its lease lapsed: the relay publishes it now


async def test_two_relays_claim_disjoint_outbox_entries(store: BaseTaskStore) -> None:
    tasks = [make_task(created_at=utcnow() - timedelta(seconds=60 - i)) for i in range(30)]
    await store.create_many(tasks)
    lease = utcnow() + timedelta(seconds=30)
    a, b = await asyncio.gather(
        store.claim_pending_outbox(owner="r1", limit=20, lease_until=lease, created_before=utcnow()),
        store.claim_pending_outbox(owner="r2", limit=20, lease_until=lease, created_before=utcnow()),
    )
    ids_a, ids_b = {t.id for t in a}, {t.id for t in b}
    assert not ids_a & ids_b
    assert len(ids_a | ids_b) == 30


async def test_a_claim_marks_the_outbox_published(store: BaseTaskStore) -> None:
    single, batched = make_task(), make_task()
    await store.create_many([single, batched])
    one = await claim(store, single)
    many = await store.try_set_running_many(
        [ClaimRequest(batched.id, 0, 0)], node_id=NODE, lease_until=utcnow() + timedelta(seconds=30)
    )
    assert one is not None and one.outbox.status is OutboxStatus.PUBLISHED
    assert many[batched.id].outbox.status is OutboxStatus.PUBLISHED
    assert await store.mark_published([single.id, batched.id]) == 0


async def test_the_backlog_counts_pending_outbox_entries_and_finds_the_oldest_queued_task(
    store: BaseTaskStore,
) -> None:
    empty = await store.backlog()
    assert empty.outbox_pending == 0 and empty.oldest_queued_at is None
    old = make_task(created_at=utcnow() - timedelta(minutes=5))
    new = make_task()
    running = make_task(status=TaskStatus.RUNNING, created_at=utcnow() - timedelta(hours=1))
    await store.create_many([old, new, running])
    await store.mark_published([new.id])
    backlog = await store.backlog()
    assert backlog.outbox_pending == 2  # old and running; new was published
    assert close_in_time(backlog.oldest_pending_at, running.created_at)
    assert close_in_time(backlog.oldest_queued_at, old.created_at)  # not the older RUNNING one
    assert backlog.oldest_queued_at is not None and backlog.oldest_queued_at.tzinfo is not None


async def test_a_failed_publish_with_a_wait_keeps_the_entry_from_every_relay_until_then(
    store: BaseTaskStore,
) -> None:
    task = make_task(created_at=utcnow() - timedelta(seconds=60))
    await store.create(task)
    lease = utcnow() + timedelta(seconds=30)
    taken = await store.claim_pending_outbox(owner="r1", limit=10, lease_until=lease, created_before=utcnow())
    assert [t.id for t in taken] == [task.id]
    before = store.now()
    await store.record_publish_failure(task.id, "broker down", retry_in=0.5)
    got = await store.get(task.id)
    assert got is not None and got.outbox.attempts == 1 and got.outbox.lease_until is not None
    assert timedelta(seconds=0.4) < got.outbox.lease_until - before < timedelta(seconds=1.5)
    assert (
        await store.claim_pending_outbox(owner="r2", limit=10, lease_until=lease, created_before=utcnow())
        == []
    )
    await asyncio.sleep(0.7)  # the wait is over: another relay takes it
    again = await store.claim_pending_outbox(owner="r2", limit=10, lease_until=lease, created_before=utcnow())
    assert [t.id for t in again] == [task.id]
