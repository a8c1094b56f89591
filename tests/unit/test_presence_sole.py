"""One live process per node id: before consuming, a worker waits out a record of its node id
that another process wrote and that is still present, and refuses to start (``NodeIdInUse``)
when that process is seen beating."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from taskplatform.errors import NodeIdInUse, StoreError
from taskplatform.models.worker import MISSED_BEATS, WorkerRecord, WorkerState
from taskplatform.store.memory import MemoryTaskStore
from taskplatform.worker import presence as presence_module
from taskplatform.worker.presence import Presence, WorkerIdentity

IDENTITY = WorkerIdentity(
    node_id="node-a",
    labels={},
    task_types=["t"],
    queue_groups=["default"],
    version="1",
    host="host-a",
    pid=4242,
)
#: The other process's heartbeat interval: its record lapses 3 of them after its last beat.
OTHER_BEAT = 0.1


@pytest.fixture
async def store() -> AsyncIterator[MemoryTaskStore]:
    s = MemoryTaskStore("memory://")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def _presence(store: MemoryTaskStore) -> Presence:
    return Presence(store, IDENTITY, interval=0.05, capacity=lambda: 1, running=lambda: 0)


async def _beat_as(
    store: MemoryTaskStore,
    *,
    host: str = "host-b",
    pid: int = 7,
    state: WorkerState = WorkerState.ONLINE,
    life: float | None = None,
) -> WorkerRecord:
    """Write node-a's record as another process would at a beat now."""
    now = store.now()
    record = WorkerRecord(
        node_id="node-a",
        host=host,
        pid=pid,
        concurrency=1,
        version="1",
        started_at=now,
        last_seen_at=now,
        heartbeat_seconds=OTHER_BEAT,
        expires_at=now + timedelta(seconds=life if life is not None else OTHER_BEAT * MISSED_BEATS),
        state=state,
    )
    await store.beat_worker(record)
    return record


async def test_no_record_a_lapsed_one_a_stopped_one_or_its_own_start_at_once(store: MemoryTaskStore) -> None:
    p = _presence(store)
    await asyncio.wait_for(p.wait_until_sole(), 1)  # no record
    await _beat_as(store, life=-1.0)  # lapsed: its process is gone
    await asyncio.wait_for(p.wait_until_sole(), 1)
    await _beat_as(store, state=WorkerState.STOPPED)
    await asyncio.wait_for(p.wait_until_sole(), 1)
    await _beat_as(store, host="host-a", pid=4242)  # this process's own record (a restarted runtime)
    await asyncio.wait_for(p.wait_until_sole(), 1)


async def test_a_predecessor_killed_without_stopping_is_waited_out(
    store: MemoryTaskStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    last = await _beat_as(store)  # then it dies: no more beats
    await asyncio.wait_for(_presence(store).wait_until_sole(), 5)
    assert store.now() >= last.expires_at  # it waited until the record lapsed
    assert "node id 'node-a' is in use by pid 7 on host-b" in caplog.text
    assert "its node id is free; starting" in caplog.text


async def test_a_live_holder_that_beats_again_makes_the_start_fail(store: MemoryTaskStore) -> None:
    await _beat_as(store)
    waiting = asyncio.create_task(_presence(store).wait_until_sole())
    await asyncio.sleep(OTHER_BEAT / 2)
    assert not waiting.done()
    await _beat_as(store)  # the other process is alive
    with pytest.raises(NodeIdInUse, match=r"pid 7 on host-b \(it beat again at .*TASKPLATFORM_NODE_ID"):
        await asyncio.wait_for(waiting, 5)


async def test_a_holder_that_drains_is_waited_for_until_it_stops(store: MemoryTaskStore) -> None:
    await _beat_as(store)
    waiting = asyncio.create_task(_presence(store).wait_until_sole())
    await asyncio.sleep(OTHER_BEAT / 2)
    for _ in range(5):  # SIGTERM: it drains, beating as it does, longer than its record lives
        await _beat_as(store, state=WorkerState.STOPPING)
        await asyncio.sleep(OTHER_BEAT)
        assert not waiting.done()
    await _beat_as(store, state=WorkerState.STOPPED)
    assert await asyncio.wait_for(waiting, 5) is True


async def test_a_holder_draining_past_the_limit_makes_the_start_fail(
    store: MemoryTaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(presence_module, "SOLE_WAIT_LIMIT_SECONDS", 0.2)
    await _beat_as(store, state=WorkerState.STOPPING)
    waiting = asyncio.create_task(_presence(store).wait_until_sole())
    with pytest.raises(NodeIdInUse, match=r"still stopping after \d+ s of waiting"):
        while not waiting.done():
            await _beat_as(store, state=WorkerState.STOPPING)
            await asyncio.sleep(OTHER_BEAT / 2)
        await waiting


async def test_an_unreadable_registry_is_read_again_until_it_answers(
    store: MemoryTaskStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    read = store.get_worker
    failures = iter([StoreError("connection refused (test)"), StoreError("connection refused (test)")])

    async def flaky(node_id: str) -> WorkerRecord | None:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return await read(node_id)

    monkeypatch.setattr(store, "get_worker", flaky)
    await _beat_as(store)  # a live holder: found once the registry answers
    waiting = asyncio.create_task(_presence(store).wait_until_sole())
    await asyncio.sleep(0.3)  # the two failed reads and the first good one
    assert not waiting.done()
    await _beat_as(store)
    with pytest.raises(NodeIdInUse):
        await asyncio.wait_for(waiting, 5)
    assert caplog.text.count("cannot read the registry to check its node id (connection refused (test))") == 1


async def test_a_holder_that_begins_to_drain_gets_the_limit_from_then(
    store: MemoryTaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(presence_module, "SOLE_WAIT_LIMIT_SECONDS", 0.3)
    await _beat_as(store, life=1.0)  # online: the limit from this record would end the wait at 1.3 s
    waiting = asyncio.create_task(_presence(store).wait_until_sole())
    await asyncio.sleep(0.35)
    for _ in range(12):  # SIGTERM at 0.35 s: a drain of 1.5 s grace, past 1.3 s, then a clean stop
        await _beat_as(store, state=WorkerState.STOPPING, life=1.5)
        await asyncio.sleep(OTHER_BEAT)
        assert not waiting.done()
    await _beat_as(store, state=WorkerState.STOPPED)
    assert await asyncio.wait_for(waiting, 5) is True


async def test_a_stop_ends_the_wait(store: MemoryTaskStore) -> None:
    await _beat_as(store, life=30.0)
    p = _presence(store)
    waiting = asyncio.create_task(p.wait_until_sole())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await p.stop()  # never started: nothing written
    assert await asyncio.wait_for(waiting, 1) is False  # the runtime then starts no consumer
    record = await store.get_worker("node-a")
    assert record is not None and record.pid == 7


async def test_a_runtime_stopped_while_it_waits_for_its_node_id_starts_no_consumer(
    make_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskplatform import runtime as runtime_module
    from taskplatform.runtime import Runtime

    async def declared(connection: Any, topology: Any) -> None:
        return None

    monkeypatch.setattr(runtime_module, "declare_topology", declared)
    rt = Runtime(make_settings(executor_modules=["tests.support.executables"]), role="worker", consume=True)
    assert rt.presence is not None and rt.consumer is not None
    started: list[str] = []

    async def stopped_meanwhile() -> bool:
        return False

    async def start() -> None:
        started.append("consumer")

    monkeypatch.setattr(type(rt.broker), "connection", property(lambda self: None))  # no broker here
    monkeypatch.setattr(rt.presence, "wait_until_sole", stopped_meanwhile)
    monkeypatch.setattr(rt.consumer, "start", start)
    await rt._on_broker_up()  # noqa: SLF001
    assert started == [] and not rt.broker_ready.is_set()
