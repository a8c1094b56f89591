"""The broker misbehaves under load: every connection closed, the broker restarted.

These tests stop their broker and close all its connections, so they never run against the
shared one: they get ``disrupted_rabbitmq``, a RabbitMQ node of the suite's own (or a broker
declared disruptable with ``TASKPLATFORM_TEST_BROKER_DISRUPTABLE=1``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from taskplatform.models import TaskStatus
from taskplatform.runtime import Runtime
from taskplatform.submission import SubmitRequest
from tests.support.executables import Noop
from tests.support.runtime import eventually, running
from tests.support.services import DisruptableBroker, vhost_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def _completed(runtime: Runtime, ids: list[str]) -> int:
    statuses = [await runtime.store.get(i) for i in ids]
    return sum(1 for t in statuses if t is not None and t.status is TaskStatus.COMPLETED)


async def test_all_connections_closed_during_500_tasks_all_complete_once(
    make_runtime: Callable[..., Runtime], disrupted_rabbitmq: DisruptableBroker
) -> None:
    broker = disrupted_rabbitmq
    runtime = make_runtime(role="dev", relay=True, prefetch=64, amqp_url=broker.url)
    ids: list[str] = []
    async with running(runtime):

        async def submit(n: int) -> None:
            for _ in range(n // 50):
                batch = [SubmitRequest(task_type="test_noop", parameters={"sleep": 0.02}) for _ in range(50)]
                ids.extend(s.task.id for s in await runtime.submitter.submit_many(batch))
                await asyncio.sleep(0.05)

        await submit(250)
        await eventually(lambda: _at_least(runtime, ids, 100), timeout=30)
        await broker.rabbitmqctl("close_all_connections", "-p", vhost_of(broker.url), "disruption test")
        await submit(250)  # some of these are stored while the broker connection is down
        await eventually(lambda: _at_least(runtime, ids, 500), timeout=120)
        assert len(set(ids)) == 500
    assert all(Noop.calls[i] >= 1 for i in ids)  # each ran at least once, and is COMPLETED once


async def test_broker_restart_with_200_tasks_queued_all_complete_afterwards(
    make_runtime: Callable[..., Runtime], disrupted_rabbitmq: DisruptableBroker
) -> None:
    broker = disrupted_rabbitmq
    api = make_runtime(role="api", consume=False, relay=True, amqp_url=broker.url)
    async with running(api):
        requests = [SubmitRequest(task_type="test_noop", parameters={"value": i}) for i in range(200)]
        submitted = await api.submitter.submit_many(requests)
        assert all(s.published for s in submitted)
        ids = [s.task.id for s in submitted]
        await broker.rabbitmqctl("stop_app")
        await broker.rabbitmqctl("start_app")
        await broker.rabbitmqctl("await_startup")
        worker = make_runtime(node_id="after-restart", amqp_url=broker.url)
        async with running(worker):
            await eventually(lambda: _at_least(worker, ids, 200), timeout=120)


async def _at_least(runtime: Runtime, ids: list[str], n: int) -> bool:
    return len(ids) >= n and await _completed(runtime, ids) >= n
