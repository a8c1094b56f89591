"""A worker's presence in the fleet registry, on the memory store: the record it writes and keeps
writing, its states through a clean stop, an outage it rides out, coming back after the sweep
marked it offline; and the sweep and prune every reaper runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from taskplatform.errors import StoreError
from taskplatform.metrics import Metrics
from taskplatform.models.worker import MISSED_BEATS, WorkerRecord, WorkerState
from taskplatform.store.memory import MemoryTaskStore
from taskplatform.worker.presence import FleetSweep, Presence, WorkerIdentity
from tests.support.workers import beat_at_age

INTERVAL = 0.05
IDENTITY = WorkerIdentity(
    node_id="node-a",
    labels={"role": "db", "region": "eu"},
    task_types=["t1", "t2"],
    queue_groups=["default"],
    version="9.9",
    host="host-a",
    pid=4242,
)


class Store(MemoryTaskStore):
    """The memory store; ``down`` makes the registry's writes fail as in an outage."""

    def __init__(self) -> None:
        super().__init__("memory://")
        self.down = False
        self.writes: list[WorkerRecord] = []

    async def beat_worker(self, record: WorkerRecord) -> WorkerState | None:
        if self.down:
            raise StoreError("the store is unreachable (test)")
        self.writes.append(record)
        return await super().beat_worker(record)


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    s = Store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


class Seen:
    """What ``on_transition`` was told."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, WorkerState, WorkerState | None]] = []
        self.fail = fail

    async def __call__(self, record: WorkerRecord, previous: WorkerState | None) -> None:
        self.calls.append((record.node_id, record.state, previous))
        if self.fail:
            raise RuntimeError("the events exchange is away (test)")


def presence(
    store: Store, seen: Seen | None = None, metrics: Metrics | None = None, running: int = 2
) -> Presence:
    return Presence(
        store,
        IDENTITY,
        interval=INTERVAL,
        capacity=lambda: 8,
        running=lambda: running,
        metrics=metrics,
        on_transition=seen,
    )


def transitions(metrics: Metrics, to: str) -> float:
    value = metrics.registry.get_sample_value("taskplatform_worker_transitions_total", {"to": to})
    assert value is not None
    return value


async def test_the_first_beat_registers_the_worker_online_with_what_it_serves(store: Store) -> None:
    seen, metrics = Seen(), Metrics()
    p = presence(store, seen, metrics)
    await p.start()
    try:
        record = await store.get_worker("node-a")
        assert record is not None
        assert (record.host, record.pid, record.labels) == ("host-a", 4242, {"role": "db", "region": "eu"})
        assert (record.task_types, record.queue_groups, record.version) == (["t1", "t2"], ["default"], "9.9")
        assert (record.concurrency, record.running, record.state) == (8, 2, WorkerState.ONLINE)
        assert record.expires_at - record.last_seen_at == timedelta(seconds=INTERVAL * MISSED_BEATS)
        assert record.online_at(store.now())
        assert seen.calls == [("node-a", WorkerState.ONLINE, None)]
        assert transitions(metrics, "online") == 1
    finally:
        await p.stop()


async def test_it_beats_every_interval_and_only_the_first_beat_is_a_transition(store: Store) -> None:
    seen = Seen()
    p = presence(store, seen)
    await p.start()
    await asyncio.sleep(INTERVAL * 5)
    beats = p.beats
    await p.stop()
    assert beats >= 3
    first, later = store.writes[0], store.writes[beats - 1]
    assert later.last_seen_at > first.last_seen_at and later.started_at == first.started_at
    assert [c for c in seen.calls if c[1] is WorkerState.ONLINE] == [("node-a", WorkerState.ONLINE, None)]


async def test_a_clean_stop_writes_stopping_with_the_grace_then_stopped(store: Store) -> None:
    seen, metrics = Seen(), Metrics()
    p = presence(store, seen, metrics)
    await p.start()
    await p.stopping(grace=30)
    draining = await store.get_worker("node-a")
    assert draining is not None and draining.state is WorkerState.STOPPING
    assert draining.expires_at - draining.last_seen_at == timedelta(seconds=30 + INTERVAL * MISSED_BEATS)
    assert draining.online_at(store.now())  # still present while it drains
    await p.stop()
    stopped = await store.get_worker("node-a")
    assert stopped is not None and stopped.state is WorkerState.STOPPED
    assert not stopped.online_at(store.now())
    assert stopped.state_changed_at >= draining.state_changed_at
    assert seen.calls[-1] == ("node-a", WorkerState.STOPPED, WorkerState.STOPPING)
    assert transitions(metrics, "stopped") == 1
    writes = len(store.writes)
    await asyncio.sleep(INTERVAL * 3)
    assert len(store.writes) == writes  # no beat after the stop


async def test_a_worker_that_never_started_writes_nothing_when_stopped(store: Store) -> None:
    p = presence(store)
    await p.stopping(grace=5)
    await p.stop()
    assert store.writes == [] and await store.get_worker("node-a") is None


async def test_an_outage_is_logged_once_and_the_beats_resume_without_a_transition(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    seen = Seen()
    p = presence(store, seen)
    await p.start()
    with caplog.at_level(logging.INFO, logger="taskplatform.worker.presence"):
        store.down = True
        assert await p.beat() is False
        assert await p.beat() is False
        store.down = False
        assert await p.beat() is True
    await p.stop()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot write worker node-a's registry record" in warnings[0].getMessage()
    assert "is written again" in caplog.text
    assert [c[1] for c in seen.calls] == [WorkerState.ONLINE, WorkerState.STOPPED]


async def test_a_start_during_an_outage_registers_at_the_first_beat_that_lands(store: Store) -> None:
    seen = Seen()
    p = presence(store, seen)
    store.down = True
    await p.start()  # does not raise: the worker runs, the loop tries again
    assert await store.get_worker("node-a") is None
    store.down = False
    await asyncio.sleep(INTERVAL * 3)
    assert (await store.get_worker("node-a")) is not None
    assert seen.calls[0] == ("node-a", WorkerState.ONLINE, None)
    await p.stop()


async def test_a_worker_marked_offline_comes_back_online_from_its_next_beat(store: Store) -> None:
    seen, metrics = Seen(), Metrics()
    p = presence(store, seen, metrics)
    await p.start()
    store.down = True  # it cannot beat: its record expires
    await asyncio.sleep(INTERVAL * (MISSED_BEATS + 1))
    sweep = FleetSweep(store, retention_seconds=None, metrics=metrics, on_transition=seen)
    assert await sweep.sweep() == 1
    offline = await store.get_worker("node-a")
    assert offline is not None and offline.state is WorkerState.OFFLINE
    store.down = False
    assert await p.beat() is True
    back = await store.get_worker("node-a")
    assert back is not None and back.state is WorkerState.ONLINE
    assert back.state_changed_at > offline.state_changed_at  # since when it is online again
    assert ("node-a", WorkerState.OFFLINE, WorkerState.ONLINE) in seen.calls
    assert seen.calls[-1] == ("node-a", WorkerState.ONLINE, WorkerState.OFFLINE)
    assert transitions(metrics, "online") == 2 and transitions(metrics, "offline") == 1
    await p.stop()


async def test_a_failing_announcement_is_logged_and_the_worker_goes_on(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    p = presence(store, Seen(fail=True))
    with caplog.at_level(logging.ERROR, logger="taskplatform.worker.presence"):
        await p.start()
        await p.stop()
    assert "announcing worker node-a online failed" in caplog.text
    assert "announcing worker node-a stopped failed" in caplog.text


async def test_a_stopped_that_cannot_be_written_is_left_to_the_sweep(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    seen = Seen()
    p = presence(store, seen)
    await p.start()
    store.down = True
    with caplog.at_level(logging.WARNING, logger="taskplatform.worker.presence"):
        await p.stop()
    assert "could not write 'stopped'" in caplog.text
    assert [c[1] for c in seen.calls] == [WorkerState.ONLINE]


def test_an_interval_must_be_positive(store: Store) -> None:
    with pytest.raises(ValueError, match="interval"):
        Presence(store, IDENTITY, interval=0, capacity=lambda: 1, running=lambda: 0)


async def test_the_sweep_marks_only_present_expired_workers_and_a_failing_announcement_is_logged(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await beat_at_age(store, "live", age=0)
    await beat_at_age(store, "silent", age=10)
    await beat_at_age(store, "gone-cleanly", age=10, state=WorkerState.STOPPED)
    metrics, seen = Metrics(), Seen(fail=True)
    sweep = FleetSweep(store, retention_seconds=None, metrics=metrics, on_transition=seen)
    with caplog.at_level(logging.WARNING, logger="taskplatform.worker.presence"):
        assert await sweep.sweep() == 1
    assert "worker silent on h (pid 1) is offline: no heartbeat for 10.0s (every 1s expected)" in caplog.text
    assert "announcing worker silent offline failed" in caplog.text
    assert seen.calls == [("silent", WorkerState.OFFLINE, WorkerState.ONLINE)]
    assert transitions(metrics, "offline") == 1
    assert await sweep.sweep() == 0  # once per transition
    states = {w.node_id: w.state for w in (await store.list_workers(limit=10)).items}
    assert states == {"live": "online", "silent": "offline", "gone-cleanly": "stopped"}


async def test_prune_deletes_long_gone_records_and_without_retention_keeps_all(store: Store) -> None:
    await beat_at_age(store, "live", age=0)
    await beat_at_age(store, "old-offline", age=100, state=WorkerState.OFFLINE)
    await beat_at_age(store, "old-stopped", age=100, state=WorkerState.STOPPED)
    await beat_at_age(store, "recent-stopped", age=1, state=WorkerState.STOPPED)
    assert await FleetSweep(store, retention_seconds=None).prune() == 0
    assert await FleetSweep(store, retention_seconds=0).prune() == 0  # 0 keeps them too
    assert await FleetSweep(store, retention_seconds=50).prune() == 2
    left = sorted(w.node_id for w in (await store.list_workers(limit=10)).items)
    assert left == ["live", "recent-stopped"]


async def test_a_stopped_write_that_hangs_is_given_up_after_its_bound(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from taskplatform.worker import presence as presence_module

    monkeypatch.setattr(presence_module, "FINAL_WRITE_SECONDS", 0.05)
    p = presence(store)
    await p.start()
    hang = asyncio.Event()

    async def hanging(record: WorkerRecord) -> WorkerState | None:
        await hang.wait()
        return None

    monkeypatch.setattr(store, "beat_worker", hanging)
    with caplog.at_level(logging.WARNING, logger="taskplatform.worker.presence"):
        await asyncio.wait_for(p.stop(), timeout=5)
    assert "could not write 'stopped'" in caplog.text


async def test_a_hanging_store_delays_neither_stopping_nor_stop_past_the_write_bound(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskplatform.worker import presence as presence_module

    monkeypatch.setattr(presence_module, "FINAL_WRITE_SECONDS", 0.05)
    p = presence(store)
    await p.start()

    async def hanging(record: WorkerRecord) -> WorkerState | None:
        await asyncio.Event().wait()
        return None

    monkeypatch.setattr(store, "beat_worker", hanging)
    await asyncio.sleep(INTERVAL * 2)  # a loop beat is hanging now
    await asyncio.wait_for(p.stopping(grace=1), timeout=5)
    await asyncio.wait_for(p.stop(), timeout=5)


async def test_a_beat_that_raises_a_bug_is_logged_and_the_beats_go_on(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    p = presence(store)
    await p.start()
    real = store.beat_worker
    failures = [1]

    async def flaky(record: WorkerRecord) -> WorkerState | None:
        if failures:
            failures.pop()
            raise RuntimeError("a bug (test)")
        return await real(record)

    monkeypatch.setattr(store, "beat_worker", flaky)
    before = p.beats
    with caplog.at_level(logging.ERROR, logger="taskplatform.worker.presence"):
        await asyncio.sleep(INTERVAL * 5)
    assert "a registry beat failed" in caplog.text
    assert p.beats > before  # it kept beating
    await p.stop()


async def test_a_start_after_the_stop_writes_nothing(store: Store) -> None:
    p = presence(store)
    await p.stop()
    await p.start()
    assert store.writes == [] and await store.get_worker("node-a") is None


async def test_stop_itself_cancelled_is_not_swallowed(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    p = presence(store)
    await p.start()

    async def slow(record: WorkerRecord) -> WorkerState | None:
        await asyncio.sleep(10)
        return None

    monkeypatch.setattr(store, "beat_worker", slow)
    stopping = asyncio.create_task(p.stop())
    await asyncio.sleep(INTERVAL)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
