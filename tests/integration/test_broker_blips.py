"""The worker's broker connection drops for a few seconds while long attempts run (RabbitMQ
behind a TCP proxy the test cuts).

An attempt outlives its channel: it runs to the end, its outcome is stored, and the broker's
redelivery of its message is settled against that outcome instead of running it again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from taskplatform.models import BackgroundTask, TaskMessage, TaskStatus
from taskplatform.runtime import Runtime
from tests.support.executables import Boom, Noop
from tests.support.runtime import eventually, running
from tests.support.services import amqp_url_via, rabbitmq_address
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def _status(runtime: Runtime, task_id: str) -> TaskStatus | None:
    task = await runtime.store.get(task_id)
    return task.status if task else None


async def _all(runtime: Runtime, ids: list[str], status: TaskStatus) -> bool:
    return all([await _status(runtime, i) is status for i in ids])


async def test_a_3s_broker_cut_during_ten_20s_tasks_runs_each_once_and_all_complete(
    make_runtime: Callable[..., Runtime], rabbitmq: Any, request: pytest.FixtureRequest
) -> None:
    store_url: str = request.getfixturevalue("own_postgres_database_url")
    proxy = TcpProxy(*rabbitmq_address())
    await proxy.open()
    api = make_runtime(role="api", consume=False, store_url=store_url)
    worker = make_runtime(
        node_id="blipped",
        store_url=store_url,
        amqp_url=amqp_url_via("127.0.0.1", proxy.port),
        reaper_enabled=False,
    )
    tasks = [BackgroundTask(task_type="test_noop", parameters={"value": i, "sleep": 20.0}) for i in range(10)]
    # Two that fail for good at the end: their messages must still reach the DLQ as records.
    doomed = [BackgroundTask(task_type="test_boom", parameters={"value": i, "sleep": 20.0}) for i in range(2)]
    ids, doomed_ids = [t.id for t in tasks], [t.id for t in doomed]
    try:
        async with running(api), running(worker):
            await api.store.create_many(tasks + doomed)
            await api.publisher.publish_many([TaskMessage.for_task(t) for t in tasks + doomed])
            await eventually(lambda: _all(api, ids + doomed_ids, TaskStatus.RUNNING), timeout=15)
            started = time.monotonic()
            await proxy.close()  # every connection of the worker cut, nothing listening
            await asyncio.sleep(3.0)
            await proxy.open()
            cut = time.monotonic() - started
            await eventually(lambda: _all(api, ids, TaskStatus.COMPLETED), timeout=60)
            await eventually(lambda: _all(api, doomed_ids, TaskStatus.DEAD_LETTER), timeout=30)
            await eventually(lambda: _records(api, doomed_ids), timeout=30)
            assert worker.consumer is not None
            await eventually(lambda: _idle(worker), timeout=30)  # every redelivery settled
            done = [await api.store.get(i) for i in ids]
    finally:
        await proxy.close()
    print(
        f"\nbroker cut {cut:.1f}s: runs per task {[Noop.calls[i] for i in ids]}, "
        f"doomed {[Boom.calls[i] for i in doomed_ids]}"
    )
    assert [Noop.calls[i] for i in ids] == [1] * 10
    assert [Boom.calls[i] for i in doomed_ids] == [1] * 2
    assert all(t is not None and t.retry_count == 0 and t.execution_node_id == "blipped" for t in done)


async def _records(runtime: Runtime, ids: list[str]) -> bool:
    records = [await runtime.store.get_dead_letter(i) for i in ids]
    return all(r is not None for r in records)


async def _idle(runtime: Runtime) -> bool:
    return runtime.consumer is not None and runtime.consumer.in_flight == 0
