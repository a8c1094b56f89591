"""Sub-tasks against real RabbitMQ: roll-up, completion with errors, cancellation, throttling."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import pytest

from executors.batch import BatchGenerateScene, BatchGenerateSummary
from executors.scene import GenerateScene
from taskplatform.auth import SYSTEM
from taskplatform.events import Published, TaskProgress
from taskplatform.models import TERMINAL, BackgroundTask, TaskStatus
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.store.base import TaskFilter
from taskplatform.submission import SubmitRequest
from taskplatform.tasks.registry import ExecutableRegistry
from tests.support.api import client_of, served
from tests.support.executables import EXECUTABLES, Cooperative, FailingSummary
from tests.support.runtime import eventually, running

pytestmark = pytest.mark.integration

TEXT = "The river rose in the night. Boats drifted loose. By morning the town had moved uphill."


@pytest.fixture
def registry() -> ExecutableRegistry:
    """The batch executables over a ``generate_summary`` whose FAIL texts fail permanently."""
    return ExecutableRegistry(
        [FailingSummary, BatchGenerateSummary, GenerateScene, BatchGenerateScene, *EXECUTABLES]
    )


@pytest.fixture
async def api_and_worker(
    make_settings: Callable[..., PlatformSettings], registry: ExecutableRegistry, rabbitmq: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    runtime = Runtime(make_settings(prefetch=64), role="dev", registry=registry, consume=True, relay=True)
    async with served(runtime) as app, client_of(app) as client:
        yield client, runtime


async def _get(runtime: Runtime, task_id: str) -> BackgroundTask:
    task = await runtime.store.get(task_id)
    assert task is not None
    return task


async def _children(runtime: Runtime, parent_id: str) -> list[BackgroundTask]:
    page = await runtime.store.list(TaskFilter(parent_task_id=parent_id), limit=500)
    return page.items


async def test_batch_of_50_with_5_permanent_failures_ends_completed_with_errors(
    api_and_worker: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api_and_worker
    items = [{"text": ("FAIL " if i % 10 == 3 else "") + TEXT, "max_sentences": 1} for i in range(50)]
    r = await client.post(
        "/api/v1/tasks", json={"task_type": "batch_generate_summary", "parameters": {"items": items}}
    )
    assert r.status_code == 201, r.text
    parent_id = r.json()["task_id"]

    async def finished() -> bool:
        return (await _get(runtime, parent_id)).status in TERMINAL

    await eventually(finished, timeout=30)
    want = {"total": 50, "completed": 45, "dead_letter": 5}

    async def settled() -> bool:
        summary = (await _get(runtime, parent_id)).sub_task_status_summary
        return summary is not None and summary.model_dump() == {
            **dict.fromkeys(summary.model_dump(), 0),
            **want,
        }

    await eventually(settled, timeout=10)  # a failed child passes FAILED on its way to DEAD_LETTER
    parent = await _get(runtime, parent_id)
    assert parent.status is TaskStatus.COMPLETED_WITH_ERRORS
    assert parent.progress is not None and parent.progress["percent"] == 100.0
    assert parent.result is not None and parent.result["submitted"] == 50

    r = await client.get(f"/api/v1/tasks/{parent_id}/children", params={"limit": 100})
    assert r.status_code == 200
    children = r.json()["items"]
    assert len(children) == 50 and r.json()["next_cursor"] is None
    assert {c["id"] for c in children} == set(parent.result["child_task_ids"])
    assert all(c["parent_task_id"] == parent_id for c in children)
    by_status: dict[str, int] = {}
    for c in children:
        by_status[c["status"]] = by_status.get(c["status"], 0) + 1
    assert by_status == {"COMPLETED": 45, "DEAD_LETTER": 5}
    failed_texts = [c["parameters"]["text"] for c in children if c["status"] == "DEAD_LETTER"]
    assert all(t.startswith("FAIL") for t in failed_texts)

    r = await client.get(f"/api/v1/tasks/{parent_id}/children", params={"status": "DEAD_LETTER"})
    assert len(r.json()["items"]) == 5
    assert (await client.get("/api/v1/tasks/no-such-task/children")).status_code == 404


async def test_batch_whose_children_all_succeed_ends_completed(
    api_and_worker: tuple[httpx.AsyncClient, Runtime],
) -> None:
    _client, runtime = api_and_worker
    scene = {
        "setting": {"location": "the old lighthouse"},
        "characters": [{"name": "Ada"}],
        "beats": ["Ada climbs the stairs"],
        "seed": 7,
    }
    submitted = await runtime.submitter.submit(
        SubmitRequest(task_type="batch_generate_scene", parameters={"scenes": [scene, {**scene, "seed": 8}]})
    )
    parent_id = submitted.task.id

    async def finished() -> bool:
        return (await _get(runtime, parent_id)).status in TERMINAL

    await eventually(finished, timeout=20)
    parent = await _get(runtime, parent_id)
    assert parent.status is TaskStatus.COMPLETED
    assert parent.sub_task_status_summary is not None
    assert parent.sub_task_status_summary.completed == parent.sub_task_status_summary.total == 2


async def test_retried_parent_does_not_duplicate_its_children(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    runtime = make_runtime()
    children = [{"value": i} for i in range(8)]
    async with running(runtime):
        submitted = await runtime.submitter.submit(
            SubmitRequest(
                task_type="test_fanout", parameters={"children": children, "fail_first_attempt": True}
            )
        )
        parent_id = submitted.task.id

        async def finished() -> bool:
            return (await _get(runtime, parent_id)).status in TERMINAL

        await eventually(finished, timeout=20)
        parent = await _get(runtime, parent_id)
        kids = await _children(runtime, parent_id)
    assert parent.retry_count == 1 and parent.status is TaskStatus.COMPLETED
    assert len(kids) == 8 and all(k.status is TaskStatus.COMPLETED for k in kids)
    assert parent.sub_task_status_summary is not None
    assert parent.sub_task_status_summary.total == 8 and parent.sub_task_status_summary.completed == 8


@pytest.mark.parametrize("parent_keeps_running", [True, False], ids=["parent-running", "parent-waiting"])
async def test_cancelling_a_parent_cancels_it_and_every_unfinished_child(
    make_runtime: Callable[..., Runtime], rabbitmq: Any, parent_keeps_running: bool
) -> None:
    # Prefetch 4: some children run (cooperatively, until asked to stop), the rest stay queued.
    runtime = make_runtime(prefetch=4, cancel_poll_seconds=0.1)
    children = [{"value": i} for i in range(8)]
    params = {"child_type": "test_cooperative", "children": children, "keep_running": parent_keeps_running}
    async with running(runtime):
        submitted = await runtime.submitter.submit(SubmitRequest(task_type="test_fanout", parameters=params))
        parent_id = submitted.task.id

        async def some_children_run() -> bool:
            kids = await _children(runtime, parent_id)
            # a parent that ends its own run sets awaiting_children just after submitting its
            # children, which may already run by then: wait for that too
            parent = await _get(runtime, parent_id)
            waiting = parent.awaiting_children is not parent_keeps_running
            return waiting and len(kids) == 8 and sum(k.status is TaskStatus.RUNNING for k in kids) >= 2

        await eventually(some_children_run, timeout=10)
        parent = await _get(runtime, parent_id)
        assert parent.status is TaskStatus.RUNNING and parent.awaiting_children is not parent_keeps_running
        await runtime.commands.cancel(parent_id, SYSTEM)

        async def all_cancelled() -> bool:
            kids = await _children(runtime, parent_id)
            p = await _get(runtime, parent_id)
            return p.status is TaskStatus.CANCELLED and all(k.status is TaskStatus.CANCELLED for k in kids)

        await eventually(all_cancelled, timeout=15)
        kids = await _children(runtime, parent_id)

        async def counted() -> bool:
            summary = (await _get(runtime, parent_id)).sub_task_status_summary
            return summary is not None and summary.cancelled == 8 and summary.total == 8

        await eventually(counted, timeout=5)
    assert any(k.id in Cooperative.observed for k in kids)  # running children were stopped, not dropped


class _Broken:
    name = "broken-observer"

    def __init__(self) -> None:
        self.calls = 0

    async def observe(self, batch: Sequence[Published]) -> None:
        self.calls += 1
        raise RuntimeError("this observer fails on every event")


async def test_an_observer_that_always_raises_does_not_stop_tasks_and_is_counted(
    make_runtime: Callable[..., Runtime], rabbitmq: Any, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = make_runtime()
    broken = _Broken()
    runtime.bus.add_observer(broken)
    with caplog.at_level(logging.ERROR, logger="taskplatform.events.bus"):
        async with running(runtime):
            done = [
                await runtime.submitter.submit(SubmitRequest(task_type="test_noop", parameters={"value": i}))
                for i in range(20)
            ]

            async def all_done() -> bool:
                tasks = [await _get(runtime, s.task.id) for s in done]
                return all(t.status is TaskStatus.COMPLETED for t in tasks)

            await eventually(all_done, timeout=15)
            await runtime.bus.drain()
            stats = runtime.bus.stats()["broken-observer"]
    assert broken.calls >= 1 and stats.errors == broken.calls and stats.delivered == 0
    assert any("observer broken-observer failed" in r.getMessage() for r in caplog.records)


class _Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.events: list[Published] = []

    async def observe(self, batch: Sequence[Published]) -> None:
        self.events.extend(batch)


async def test_chatty_progress_is_throttled_and_the_last_value_is_kept(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    runtime = make_runtime(progress_interval_seconds=0.25)
    recorder = _Recorder()
    runtime.bus.add_observer(recorder)
    async with running(runtime):
        submitted = await runtime.submitter.submit(
            SubmitRequest(task_type="test_chatty", parameters={"updates": 2000, "pause": 0.0005})
        )

        async def done() -> bool:
            return (await _get(runtime, submitted.task.id)).status is TaskStatus.COMPLETED

        await eventually(done, timeout=20)
        await runtime.bus.drain()
        task = await _get(runtime, submitted.task.id)
    progress = [p for p in recorder.events if isinstance(p.event, TaskProgress)]
    assert task.started_at is not None and task.completed_at is not None
    elapsed = (task.completed_at - task.started_at).total_seconds()
    # At most one write per interval; the last value goes with the completion.
    assert 1 <= len(progress) <= elapsed / 0.25 + 2, (len(progress), elapsed)
    assert task.progress == {"percent": 100.0, "message": "step 2000"}
