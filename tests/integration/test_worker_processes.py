"""Crash safety with real worker processes: kill -9 mid-task, SIGTERM with work in flight, a
topology the broker refuses."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from taskplatform.models import BackgroundTask, TaskMessage, TaskStatus
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from tests.support.runtime import eventually, running
from tests.support.worker_process import start_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def _consumers(rabbitmq: Any, runtime: Runtime) -> int:
    channel = await rabbitmq.channel()
    queue = await channel.declare_queue(runtime.topology.work_queues[0].queue, passive=True)
    await channel.close()
    return int(queue.declaration_result.consumer_count)


async def _status(runtime: Runtime, task_id: str) -> TaskStatus | None:
    task = await runtime.store.get(task_id)
    return task.status if task else None


async def test_worker_killed_mid_task_another_completes_it_once(
    make_runtime: Callable[..., Runtime], rabbitmq: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store_url = request.getfixturevalue("postgres_database_url")
    effects = tmp_path / "effects.txt"
    rescuer = make_runtime(node_id="rescuer", store_url=store_url, lease_seconds=2.0)
    async with running(rescuer):
        await rescuer.consumer.stop(grace=0)  # type: ignore[union-attr]  # only the victim consumes at first
        victim = start_worker(rescuer.settings, node_id="victim", lease_seconds="2")
        try:
            await eventually(lambda: _has_consumers(rabbitmq, rescuer, 1), timeout=20)
            task = BackgroundTask(task_type="test_side_effect", parameters={"path": str(effects), "sleep": 3})
            await rescuer.store.create(task)
            await rescuer.publisher.publish(TaskMessage.for_task(task))
            await eventually(lambda: _running_on(rescuer, task.id, "victim"), timeout=10)
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
        finally:
            if victim.poll() is None:
                victim.kill()
        await rescuer.consumer.start()  # type: ignore[union-attr]
        await eventually(lambda: _is(rescuer, task.id, TaskStatus.COMPLETED), timeout=20)
        done = await rescuer.store.get(task.id)
    assert done is not None and done.execution_node_id == "rescuer" and done.retry_count == 0
    lines = effects.read_text().splitlines()
    assert len(lines) >= 1 and all(line.startswith(task.id) for line in lines)  # at least once


async def test_sigterm_with_tasks_in_flight_exits_within_grace_and_every_task_completes(
    make_runtime: Callable[..., Runtime], rabbitmq: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store_url = request.getfixturevalue("postgres_database_url")
    effects = tmp_path / "effects.txt"
    api = make_runtime(role="api", consume=False, store_url=store_url)
    tasks = [
        BackgroundTask(task_type="test_side_effect", parameters={"path": str(effects), "sleep": 2})
        for _ in range(20)
    ]
    async with running(api):
        worker = start_worker(api.settings, node_id="leaving", prefetch="20", shutdown_grace_seconds="1")
        try:
            await eventually(lambda: _has_consumers(rabbitmq, api, 1), timeout=20)
            await api.store.create_many(tasks)
            assert await api.publisher.publish_many([TaskMessage.for_task(t) for t in tasks]) == [None] * 20
            await eventually(lambda: _all(api, tasks, TaskStatus.RUNNING), timeout=10)
            started = time.monotonic()
            worker.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(worker.wait, 15)
            took = time.monotonic() - started
        finally:
            if worker.poll() is None:
                worker.kill()
        assert code == 0
        assert took < 1 + 3, f"exit took {took:.1f}s with a 1 s grace"
        after = {(await api.store.get(t.id)).status for t in tasks}  # type: ignore[union-attr]
        assert TaskStatus.RUNNING not in after, after

        successor = make_runtime(node_id="successor", store_url=store_url, prefetch=20)
        async with running(successor):
            await eventually(lambda: _all(successor, tasks, TaskStatus.COMPLETED), timeout=30)


async def _has_consumers(rabbitmq: Any, runtime: Runtime, n: int) -> bool:
    return await _consumers(rabbitmq, runtime) >= n


async def _running_on(runtime: Runtime, task_id: str, node: str) -> bool:
    task = await runtime.store.get(task_id)
    return task is not None and task.status is TaskStatus.RUNNING and task.execution_node_id == node


async def _is(runtime: Runtime, task_id: str, status: TaskStatus) -> bool:
    return await _status(runtime, task_id) is status


async def _all(runtime: Runtime, tasks: list[BackgroundTask], status: TaskStatus) -> bool:
    """Every one of this test's tasks is in ``status`` (the database is shared by the session)."""
    statuses = [await _status(runtime, t.id) for t in tasks]
    return all(s is status for s in statuses)


@pytest.mark.parametrize("command", ["worker", "api", "grpc"])
async def test_a_process_whose_topology_the_broker_refuses_exits_with_an_error(
    make_settings: Callable[..., PlatformSettings], rabbitmq: Any, command: str
) -> None:
    settings = make_settings()
    channel = await rabbitmq.channel()
    # a classic queue where the platform declares a quorum one: RabbitMQ answers PRECONDITION_FAILED
    await channel.declare_queue(f"{settings.topology_prefix}tasks.work.default", durable=True)
    await channel.close()
    process = start_worker(
        settings,
        node_id="refused",
        command=command,
        stderr=subprocess.PIPE,
        api_port="0",
        grpc_port="0",
        auth="disabled",
    )
    try:
        _, err = await asyncio.to_thread(process.communicate, timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    log = err.decode()
    assert process.returncode == 1, log  # not serving on without its broker side
    assert "setup failed" in log and "PRECONDITION_FAILED" in log, log
