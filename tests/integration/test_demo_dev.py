"""The demo executable through a real ``taskplatform dev`` (real RabbitMQ): a retry then success, a
dead letter and its replay, a task kept QUEUED to change and cancel; and ``taskplatform worker``
loads it only when configured to."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import aio_pika
import httpx
import pytest
from aiormq.exceptions import ChannelNotFoundEntity

from taskplatform.client import ApiError, TaskPlatformClient
from taskplatform.models import BackgroundTask, TaskStatus
from taskplatform.settings import PlatformSettings
from taskplatform.tasks.registry import DEMO_MODULE
from tests.support.runtime import eventually
from tests.support.server import delete_topology_now, platform_env, served_topology, serving
from tests.support.services import RABBITMQ_URL, delete_topology, require_rabbitmq
from tests.support.worker_process import start_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``taskplatform dev`` as ``scripts/run`` starts it (no executor modules configured), one
    attempt at a time (``PREFETCH=1``) and quick retries; its base URL."""
    require_rabbitmq()
    tmp = tmp_path_factory.mktemp("demo-dev")
    prefix, log = f"dm{uuid.uuid4().hex[:8]}.", tmp / "dev.log"
    env = platform_env(
        TASKPLATFORM_AMQP_URL=RABBITMQ_URL,
        TASKPLATFORM_STORE_URL=f"sqlite+aiosqlite:///{tmp / 'tasks.db'}",
        TASKPLATFORM_TOPOLOGY_PREFIX=prefix,
        TASKPLATFORM_PREFETCH="1",
        TASKPLATFORM_RETRY_INITIAL_DELAY_SECONDS="0.2",
        TASKPLATFORM_RETRY_JITTER_SECONDS="0",
        TASKPLATFORM_CANCEL_POLL_SECONDS="0.2",
        TASKPLATFORM_SHUTDOWN_GRACE_SECONDS="2",
        TASKPLATFORM_LOG_LEVEL="WARNING",
    )
    try:
        with serving("dev", env, log, ready_timeout=60) as base:
            yield base
    finally:
        delete_topology_now(served_topology(prefix, test_executables=False))


@pytest.fixture
async def client(dev: str) -> AsyncIterator[TaskPlatformClient]:
    async with TaskPlatformClient(dev) as c:
        yield c


async def _reaches(client: TaskPlatformClient, task_id: str, status: TaskStatus) -> BackgroundTask:
    async def there() -> bool:
        return (await client.get(task_id)).status is status

    await eventually(there, timeout=60, every=0.1)
    return await client.get(task_id)


async def test_dev_lists_the_demo_type(client: TaskPlatformClient, dev: str) -> None:
    async with httpx.AsyncClient(base_url=dev) as http:
        types = {t["task_type"]: t for t in (await http.get("/api/v1/task-types")).json()}
    assert "generate_summary" in types
    assert types["demo"]["queue"] == "demo"
    assert set(types["demo"]["parameters_schema"]["properties"]) == {"mode", "failures", "seconds", "message"}


async def test_a_demo_task_failing_twice_is_retried_and_completes(client: TaskPlatformClient) -> None:
    task_id = await client.submit("demo", {"mode": "retry", "failures": 2, "message": "third time lucky"})
    task = await client.wait(task_id, timeout=60)
    assert task.status is TaskStatus.COMPLETED, task.error_info
    assert task.retry_count == 2
    assert task.result == {
        "mode": "retry",
        "attempt": 2,
        "failed_attempts": 2,
        "slept_seconds": 0.0,
        "message": "third time lucky",
    }


async def test_a_failing_demo_task_is_dead_lettered_and_a_replay_with_new_parameters_completes(
    client: TaskPlatformClient,
) -> None:
    task_id = await client.submit("demo", {"mode": "fail", "message": "bad input"})
    dead = await _reaches(client, task_id, TaskStatus.DEAD_LETTER)  # through FAILED, briefly
    assert dead.retry_count == 0
    assert dead.error_info is not None and "failing on purpose: bad input" in dead.error_info.message

    async def recorded() -> bool:
        listing = await client.list_dead_letters(task_type="demo", reason="permanent-failure")
        return task_id in [r.id for r in listing.items]

    await eventually(recorded, timeout=30, every=0.2)
    record = await client.get_dead_letter(task_id)
    assert (record.task_id, record.error_type, record.status.value) == (
        task_id,
        "PermanentFailure",
        "pending",
    )

    replay = await client.replay_dead_letter(task_id, {"mode": "succeed", "message": "fixed"})
    assert replay["task_id"] == task_id
    done = await client.wait(task_id, timeout=60)
    assert done.status is TaskStatus.COMPLETED and done.replays == 1
    assert done.result is not None and done.result["message"] == "fixed"
    assert (await client.get_dead_letter(task_id)).status.value == "replayed"


async def test_a_demo_task_failing_more_often_than_its_attempts_ends_dead_letter(
    client: TaskPlatformClient,
) -> None:
    task_id = await client.submit("demo", {"mode": "retry", "failures": 5})
    task = await _reaches(client, task_id, TaskStatus.DEAD_LETTER)
    assert task.retry_count == 2  # RETRY_MAX_ATTEMPTS (3) attempts, each failed
    assert task.error_info is not None and task.error_info.type == "DemoFailure"
    assert task.error_info.reason == "attempts-exhausted"


async def test_a_sleeping_demo_task_keeps_the_next_queued_to_patch_and_cancel(
    client: TaskPlatformClient,
) -> None:
    sleeper = await client.submit("demo", {"mode": "sleep", "seconds": 600})
    await _reaches(client, sleeper, TaskStatus.RUNNING)
    waiting = await client.submit("demo", {"mode": "sleep", "seconds": 1})
    assert (await client.get(waiting)).status is TaskStatus.QUEUED  # PREFETCH=1: its slot is taken

    changed = await client.update(waiting, priority=7, tags=["demo"], metadata={"why": "trying PATCH"})
    assert (changed.status, changed.priority, changed.tags) == (TaskStatus.QUEUED, 7, ["demo"])
    with pytest.raises(ApiError) as refused:
        await client.update(sleeper, priority=7)
    assert refused.value.status == 409  # it started

    assert (await client.cancel(waiting))["status"] == TaskStatus.CANCELLED.value
    stopping = await client.cancel(sleeper)
    assert stopping["cancel_requested"] is True
    stopped = await _reaches(client, sleeper, TaskStatus.CANCELLED)
    assert stopped.result is None  # stopped mid-sleep, which it reported as progress
    assert stopped.progress is not None and "of 600 s" in str(stopped.progress)
    assert (await client.get(waiting)).status is TaskStatus.CANCELLED  # its message was skipped


# ------------------------------------------------------------ taskplatform worker
async def _consumers(channel_of: aio_pika.abc.AbstractConnection, queue: str) -> int | None:
    """Consumers of ``queue``; None when it does not exist (a passive declare closes its channel)."""
    channel = await channel_of.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
    except ChannelNotFoundEntity:
        return None
    result = declared.declaration_result.consumer_count
    await channel.close()
    return result


@pytest.mark.parametrize("configured", [False, True], ids=["default", "executor-modules-name-it"])
async def test_a_worker_loads_the_demo_only_when_its_executor_modules_name_it(
    make_settings: Callable[..., PlatformSettings], configured: bool
) -> None:
    require_rabbitmq()
    settings = make_settings()
    modules = '["tests.support.executables"' + (f', "{DEMO_MODULE}"]' if configured else "]")
    topology = served_topology(settings.topology_prefix)
    queues = {wq.group: wq.queues[0] for wq in topology.work_queues}
    worker = start_worker(settings, node_id="demo-or-not", executor_modules=modules)
    connection = await aio_pika.connect(RABBITMQ_URL, timeout=10)
    try:

        async def consuming(groups: list[str]) -> bool:
            assert worker.poll() is None, f"the worker exited with {worker.returncode}"
            return all([await _consumers(connection, queues[group]) for group in groups])

        # Its whole topology is declared before it consumes anything.
        others = [group for group in queues if group != "demo"]
        await eventually(lambda: consuming(others), timeout=60, every=0.2)
        if configured:
            await eventually(lambda: consuming(["demo"]), timeout=30, every=0.2)
        assert await _consumers(connection, queues["demo"]) == (1 if configured else None)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        await connection.close()
        await delete_topology(RABBITMQ_URL, topology)
