"""Store contract: one clock for leases, the store's (``now()``, measured by ``sync_clock``).

A process whose clock is off (faked in this process with ``platform_clock_off``, see
``tests/support/clock``) measures its offset to the store's clock, and every lease, lapse and
takeover it writes or judges is in the store's clock, so it agrees with a process whose clock
is right. SQLite is a local file: every process using it shares one machine's clock, so its
offset is 0 by definition and the cross-machine cases do not apply to it. The MongoDB
emulation answers ``hello`` with this machine's true clock (mongomock has no server clock of
its own; see ``tests/support/mongo_emulation``), which the faked platform clock is off from.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from taskplatform.events.aggregator import StateAggregator
from taskplatform.events.bus import EventBus
from taskplatform.models import BackgroundTask, TaskStatus
from taskplatform.reaper import Reaper
from taskplatform.retry import RetryPolicy
from taskplatform.store import BaseTaskStore
from taskplatform.store.base import ClaimRequest
from taskplatform.tasks.registry import ExecutableRegistry
from tests.store.helpers import NODE, make_task
from tests.support.clock import platform_clock_off, true_utcnow

#: A worker 70 s off: what lost every task over ~10 s to the reaper before leases used one clock.
SKEW = 70.0
#: How close a measured offset must be to the truth (a round trip on loopback is well under).
TOLERANCE = timedelta(seconds=1)
LEASE = timedelta(seconds=3)


def _skip_sqlite(store: BaseTaskStore) -> None:
    if store.url_scheme.startswith("sqlite"):
        pytest.skip("SQLite is a local file: every process using it shares this machine's clock")


def _reaper(store: BaseTaskStore, *, grace: float = 1.0) -> Reaper:
    bus = EventBus()
    aggregator = StateAggregator(store, bus, node_id="reaper").attach()
    return Reaper(
        store,
        ExecutableRegistry(),
        bus,
        aggregator,
        default_policy=RetryPolicy(max_attempts=3),
        node_id="reaper",
        grace=grace,
    )


async def _claimed(store: BaseTaskStore, *, node: str = NODE) -> BackgroundTask:
    """A stored task claimed by ``node`` for attempt 0 under a lease of ``LEASE`` in the store's clock."""
    task = make_task()
    await store.create(task)
    claimed = await store.try_set_running(task.id, attempt=0, node_id=node, lease_until=store.now() + LEASE)
    assert claimed is not None
    return claimed


async def _still_running_on(store: BaseTaskStore, task_id: str, node: str) -> None:
    current = await store.get(task_id)
    assert current is not None
    assert (current.status, current.execution_node_id, current.retry_count) == (TaskStatus.RUNNING, node, 0)
    assert current.error_info is None


# ---------------------------------------------------------------- measuring
async def test_sync_clock_measures_a_small_offset_against_the_store_server(store: BaseTaskStore) -> None:
    # against the emulation, the "server" is this machine: the offset is the measuring error
    offset = await store.sync_clock()
    assert store.clock_offset == offset
    assert abs(offset) < TOLERANCE, offset
    assert abs(store.now() - true_utcnow()) < TOLERANCE


@pytest.mark.parametrize("skew", [SKEW, -SKEW], ids=["ahead", "behind"])
async def test_sync_clock_finds_how_far_this_process_clock_is_off(store: BaseTaskStore, skew: float) -> None:
    with platform_clock_off(skew):
        offset = await store.sync_clock()
        now = store.now()
    if store.url_scheme.startswith("sqlite"):
        assert offset == timedelta(0)  # one machine, one clock: nothing to measure
        return
    assert abs(offset + timedelta(seconds=skew)) < TOLERANCE, offset
    assert abs(now - true_utcnow()) < TOLERANCE, "now() is the store's clock, not this process's"


# ---------------------------------------------------------------- task leases
async def test_a_lease_written_by_a_process_whose_clock_is_behind_is_live_for_a_reaper_with_a_true_clock(
    store: BaseTaskStore,
) -> None:
    _skip_sqlite(store)
    with platform_clock_off(-SKEW):  # the worker
        await store.sync_clock()
        task = await _claimed(store, node="behind")
    await store.sync_clock()  # the reaper's process: a true clock
    assert await store.list_lapsed(before=store.now(), limit=10) == []
    assert await _reaper(store, grace=1.0).run_once() == 0
    await _still_running_on(store, task.id, "behind")


async def test_a_process_whose_clock_is_ahead_neither_reaps_nor_takes_over_a_live_lease(
    store: BaseTaskStore,
) -> None:
    _skip_sqlite(store)
    task = await _claimed(store, node="owner")  # a true clock
    with platform_clock_off(SKEW):
        await store.sync_clock()
        assert await _reaper(store, grace=1.0).run_once() == 0
        lease = store.now() + LEASE
        assert await store.try_set_running(task.id, attempt=0, node_id="ahead", lease_until=lease) is None
        claims = [ClaimRequest(task.id, 0, task.priority)]
        assert await store.try_set_running_many(claims, node_id="ahead", lease_until=lease) == {}
        assert await store.mark_dead_letter(task.id, error=None, attempt=0) is None
    await _still_running_on(store, task.id, "owner")


@pytest.mark.parametrize("skew", [SKEW, -SKEW], ids=["ahead", "behind"])
async def test_a_lease_that_lapsed_in_the_store_clock_is_taken_over_whatever_the_clock(
    store: BaseTaskStore, skew: float
) -> None:
    _skip_sqlite(store)
    task = make_task()
    await store.create(task)
    lapsed = store.now() - timedelta(seconds=2)  # its owner died two seconds ago
    assert await store.try_set_running(task.id, attempt=0, node_id="dead", lease_until=lapsed)
    with platform_clock_off(skew):
        await store.sync_clock()
        won = await store.try_set_running(
            task.id, attempt=0, node_id="successor", lease_until=store.now() + LEASE
        )
    assert won is not None and won.execution_node_id == "successor"


# ---------------------------------------------------------------- outbox leases
async def test_an_outbox_lease_is_not_taken_over_by_a_relay_whose_clock_is_ahead(
    store: BaseTaskStore,
) -> None:
    _skip_sqlite(store)
    task = make_task()
    await store.create(task)
    created_before = true_utcnow() + timedelta(seconds=1)
    lease = store.now() + timedelta(seconds=30)
    leased = await store.claim_pending_outbox(
        owner="relay-a", limit=10, lease_until=lease, created_before=created_before
    )
    assert [t.id for t in leased] == [task.id]
    with platform_clock_off(SKEW):
        await store.sync_clock()
        stolen = await store.claim_pending_outbox(
            owner="relay-b",
            limit=10,
            lease_until=store.now() + timedelta(seconds=30),
            created_before=created_before,
        )
    assert stolen == []


async def test_a_failed_publish_by_a_relay_whose_clock_is_ahead_frees_the_entry_at_once(
    store: BaseTaskStore,
) -> None:
    _skip_sqlite(store)
    task = make_task()
    await store.create(task)
    created_before = true_utcnow() + timedelta(seconds=1)
    with platform_clock_off(SKEW):
        await store.sync_clock()
        lease = store.now() + timedelta(seconds=30)
        assert await store.claim_pending_outbox(
            owner="ahead", limit=10, lease_until=lease, created_before=created_before
        )
        await store.record_publish_failure(task.id, "ConnectionError: broker gone")
    await store.sync_clock()
    retaken = await store.claim_pending_outbox(
        owner="true", limit=10, lease_until=store.now() + timedelta(seconds=30), created_before=created_before
    )
    assert [t.id for t in retaken] == [task.id]


# ---------------------------------------------------------------- rate limits
@pytest.mark.parametrize("skew", [SKEW, -SKEW], ids=["ahead", "behind"])
async def test_a_rate_limit_shared_with_a_process_whose_clock_is_off_holds(
    store: BaseTaskStore, skew: float
) -> None:
    _skip_sqlite(store)
    first = await store.reserve_rate("clock:k", interval=60, max_wait=0)
    assert first.granted
    with platform_clock_off(skew):
        await store.sync_clock()
        second = await store.reserve_rate("clock:k", interval=60, max_wait=0)
    assert not second.granted, "a process whose clock is off must not find the slot free"
    assert abs(second.wait - 60) < TOLERANCE.total_seconds(), second.wait
