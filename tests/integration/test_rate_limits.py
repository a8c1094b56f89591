"""Executables' rate limits against real RabbitMQ: the rate is kept across worker processes,
holds stay within the bound, longer waits go round the delay path without counting attempts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from taskplatform.models import BackgroundTask, TaskStatus
from taskplatform.ratelimit.limiter import MemoryRateLimiter
from taskplatform.runtime import Runtime
from taskplatform.submission import SubmitRequest
from tests.support.executables import PacedResult
from tests.support.runtime import eventually, running
from tests.support.services import fresh_postgres_database
from tests.support.worker_process import start_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Claiming, the started event and scheduling between receipt and ``execute``, beyond the rate
#: limit's own hold (measured: 5-115 ms with two workers, the store and the broker on 2 cores).
CLAIM_ALLOWANCE = 0.25
#: The same, for the one delivery that waited longest, in the whole suite's company, when the
#: worker runs in this test's process. A delivery held for a second slot, or past the hold,
#: would be a full second or more over.
LATEST_START_ALLOWANCE = 0.5
#: The same, and how late the first start may follow its slot, with two worker processes on
#: PostgreSQL under coverage in the whole suite's company on 2 cores: measured 0.32 s and 0.57 s
#: over the hold. Receipt to start holds the task read, the slot's reservation and the claim,
#: each a round trip to a server that is busy there. Still short of what an unbounded hold gives
#: this test: the two workers hold up to 64 deliveries (prefetch 32 each), the last of them for
#: its slot 63 / 20 = 3.2 s later. The limiter's own hold, without the round trips, is checked
#: in ``test_one_process_with_the_memory_backend_keeps_the_rate`` (the memory limiter; the
#: PostgreSQL limiter's waits are checked by the store contract's rate-limit tests).
PROCESSES_START_ALLOWANCE = 1.0
#: How late ``asyncio.sleep`` may wake on a busy host: the slack of the limiter's own hold.
SLEEP_LATENESS = 0.25


@pytest.fixture
def database() -> Iterator[str]:
    """A PostgreSQL database of this test's own (rate-limit buckets are per store)."""
    with fresh_postgres_database("tp_rate") as url:
        yield url


async def _submit(runtime: Runtime, task_type: str, n: int, user_id: str | None = None) -> list[str]:
    requests = [
        SubmitRequest(task_type=task_type, parameters={"value": i}, user_id=user_id) for i in range(n)
    ]
    submitted = await runtime.submitter.submit_many(requests)
    assert all(s.published for s in submitted)
    return [s.task.id for s in submitted]


async def _tasks(runtime: Runtime, ids: Sequence[str]) -> list[BackgroundTask]:
    found = [await runtime.store.get(i) for i in ids]
    return [t for t in found if t is not None]


async def _all_completed(runtime: Runtime, ids: Sequence[str]) -> bool:
    tasks = await _tasks(runtime, ids)
    return len(tasks) == len(ids) and all(t.status is TaskStatus.COMPLETED for t in tasks)


async def _completed(runtime: Runtime, ids: Sequence[str]) -> int:
    return sum(1 for t in await _tasks(runtime, ids) if t.status is TaskStatus.COMPLETED)


def _results(tasks: Sequence[BackgroundTask]) -> list[PacedResult]:
    return [PacedResult.model_validate(t.result) for t in tasks]


def _most_starts_in_a_second(starts: Sequence[float]) -> int:
    ordered = sorted(starts)
    return max(sum(1 for s in ordered[i:] if s < first + 1.0) for i, first in enumerate(ordered))


async def _depth(rabbitmq: Any, queues: Sequence[str]) -> int:
    channel = await rabbitmq.channel()
    total = 0
    for name in queues:
        declared = await channel.declare_queue(name, passive=True)
        total += int(declared.declaration_result.message_count)
    await channel.close()
    return total


async def _consumers(rabbitmq: Any, runtime: Runtime) -> int:
    channel = await rabbitmq.channel()
    queue = await channel.declare_queue(runtime.topology.work_queues[0].queue, passive=True)
    await channel.close()
    return int(queue.declaration_result.consumer_count)


def _check_pace(
    tasks: Sequence[BackgroundTask],
    *,
    rate: float,
    burst: int,
    hold: float,
    held_for_slots: bool = True,
    start_allowance: float = LATEST_START_ALLOWANCE,
    first_start_allowance: float = CLAIM_ALLOWANCE,
) -> list[float]:
    """Every task completed in its first attempt, no faster than the limit and without a stall;
    no delivery held longer than the bound. Returns the sorted start times."""
    assert all(t.status is TaskStatus.COMPLETED and t.retry_count == 0 for t in tasks)
    results = _results(tasks)
    starts = sorted(r.started for r in results)
    span = starts[-1] - starts[0]
    least = (len(tasks) - burst) / rate
    longest_hold = max(r.held for r in results)
    crowded = _most_starts_in_a_second(starts)
    print(
        f"{len(tasks)} tasks at {rate:g}/s: first to last start {span:.3f} s (the limit allows "
        f"{least:.3f} s at the least), {(len(tasks) - 1) / span:.2f} starts/s; most starts in one "
        f"second {crowded}; longest hold {longest_hold * 1000:.1f} ms (bound {hold * 1000:.0f} ms)"
    )
    # The slots are ``least`` apart at the least; a start follows its slot by the claim work, so
    # the first start may be that late and the last one on time (a limit kept at twice the rate
    # would give half of ``least``).
    assert span >= least - first_start_allowance, (
        f"{span:.3f}s is faster than the limit allows ({least:.3f}s)"
    )
    assert span <= 1.3 * least + 1.0, f"{span:.3f}s: a stall ({least:.3f}s expected)"
    # Starts never precede their slots but may follow them by the claim work: a second of
    # starts holds at most what the limit allows in a second and that allowance.
    allowed = burst + int((1 + CLAIM_ALLOWANCE) * rate)
    assert crowded <= allowed, f"{crowded} starts within one second (at most {allowed})"
    assert longest_hold <= hold + start_allowance, f"a delivery was held {longest_hold:.3f}s"
    if held_for_slots:
        assert longest_hold > 0.5  # some were held for their slot, and the measure shows it
    return starts


async def test_100_tasks_limited_to_20_per_second_on_2_worker_processes_keep_the_rate(
    make_runtime: Callable[..., Runtime], database: str, rabbitmq: Any
) -> None:
    api = make_runtime(role="api", consume=False, store_url=database)
    async with running(api):
        workers = [start_worker(api.settings, node_id=f"paced-{i}") for i in range(2)]
        try:
            await eventually(lambda: _has_consumers(rabbitmq, api, 2), timeout=30)
            await _warm_up(api, ["paced-0", "paced-1"])
            ids = await _submit(api, "test_paced", 100)
            await eventually(lambda: _all_completed(api, ids), timeout=60)
            tasks = await _tasks(api, ids)
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                await asyncio.to_thread(worker.wait, 30)
    _check_pace(
        tasks,
        rate=20,
        burst=1,
        hold=api.settings.rate_limit_hold_seconds,
        start_allowance=PROCESSES_START_ALLOWANCE,
        first_start_allowance=PROCESSES_START_ALLOWANCE,  # a limit kept at twice the rate: 2.5 s
    )
    nodes = {t.execution_node_id for t in tasks}
    assert nodes == {"paced-0", "paced-1"}, nodes  # both processes ran some: the limit is shared
    assert len({r.pid for r in _results(tasks)}) == 2


async def _warm_up(api: Runtime, nodes: list[str]) -> None:
    """Run unlimited tasks until every worker has run some: a worker's first claims open its
    store connections (~0.2 s here), which would make its first starts late and bunched."""
    ids = await _submit(api, "test_noop", 20)
    await eventually(lambda: _all_completed(api, ids), timeout=30)
    ran = {t.execution_node_id for t in await _tasks(api, ids)}
    assert ran == set(nodes), ran


async def _has_consumers(rabbitmq: Any, runtime: Runtime, n: int) -> bool:
    return await _consumers(rabbitmq, runtime) >= n


async def test_one_process_with_the_memory_backend_keeps_the_rate(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    worker = make_runtime(rate_limit_backend="memory")
    assert isinstance(worker.task_rate_limiter, MemoryRateLimiter)
    async with running(worker):
        ids = await _submit(worker, "test_paced", 40)
        await eventually(lambda: _all_completed(worker, ids), timeout=30)
        tasks = await _tasks(worker, ids)
        stats = worker.consumer.rate_stats  # type: ignore[union-attr]
    _check_pace(tasks, rate=20, burst=1, hold=1.0)
    # waits up to 1.95 s: the short ones were held, the longer ones went round the delay path
    assert stats.held > 0 and stats.delayed > 0, stats
    # the limiter's own hold, without the claim work around it: within the bound but for the
    # sleep's lateness on a busy host (waits here reach 1.95 s: a hold past the bound shows)
    assert 0.5 < stats.longest_hold <= 1.0 + SLEEP_LATENESS, stats
    # a delivery sent round is held for one publish and its ack, not for its wait: it went round
    # because its wait was longer than the hold, so held for its wait it would show over the hold.
    # (The publish and ack took up to 0.69 s under coverage on a busy host: no finer bound holds.)
    assert stats.longest_delay_hold < worker.settings.rate_limit_hold_seconds, stats
    assert len(worker.task_rate_limiter) == 1  # the one bucket, in this process


async def test_per_user_limits_keep_each_users_rate_and_users_do_not_wait_for_each_other(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    worker = make_runtime(rate_limit_backend="memory")
    async with running(worker):
        alice, bob = await asyncio.gather(
            _submit(worker, "test_paced_user", 10, "alice"), _submit(worker, "test_paced_user", 10, "bob")
        )
        await eventually(lambda: _all_completed(worker, alice + bob), timeout=30)
        by_user = {user: await _tasks(worker, ids) for user, ids in (("alice", alice), ("bob", bob))}
    for tasks in by_user.values():
        _check_pace(tasks, rate=10, burst=1, hold=1.0)
    starts = sorted(r.started for tasks in by_user.values() for r in _results(tasks))
    # one shared bucket would take 1.9 s; two take 0.9 s each, side by side
    assert starts[-1] - starts[0] < 1.5, starts[-1] - starts[0]


async def test_waits_beyond_the_hold_go_round_the_delay_path_and_count_no_attempt(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    worker = make_runtime()  # the store backend (this test's SQLite file)
    topology = worker.topology
    tiers = [tier.queue for tier in topology.delay_tiers]
    work = [q for wq in topology.work_queues for q in wq.queues]
    async with running(worker):
        consumer = worker.consumer
        assert consumer is not None
        ids = await _submit(worker, "test_paced_slowly", 3)  # one start every 2 s: waits 0, 2, 4 s

        async def both_left_the_worker() -> bool:
            # one ran (publishing is concurrent: not necessarily the first submitted); the others
            # were acked and wait in delay tiers, not in the worker
            return (
                await _completed(worker, ids) == 1
                and consumer.in_flight == 0
                and await _depth(rabbitmq, tiers) == 2
                and await _depth(rabbitmq, work) == 0
            )

        await eventually(both_left_the_worker, timeout=1.5, every=0.02)
        statuses = sorted(t.status.value for t in await _tasks(worker, ids))
        assert statuses == ["COMPLETED", "QUEUED", "QUEUED"], statuses  # the store was not touched
        await eventually(lambda: _all_completed(worker, ids), timeout=15)
        tasks = await _tasks(worker, ids)
        stats = consumer.rate_stats
        after = await worker.store.reserve_rate("task_type:test_paced_slowly", interval=2.0, max_wait=0)
    starts = _check_pace(tasks, rate=0.5, burst=1, hold=1.0, held_for_slots=False)
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    # each in its own slot: one interval apart, neither earlier nor a slot later (reserved twice)
    assert all(2.0 - CLAIM_ALLOWANCE <= gap <= 2.5 for gap in gaps), gaps
    assert stats.delayed >= 2, stats
    print(
        f"re-delayed deliveries: {stats.delayed}, "
        f"longest held before its ack {stats.longest_delay_hold * 1000:.1f} ms"
    )
    assert stats.longest_delay_hold < LATEST_START_ALLOWANCE, stats  # one publish and its ack, not the wait
    assert not after.granted  # the reservations were in the store
