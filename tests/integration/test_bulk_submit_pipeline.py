"""Bulk-submitted tasks through a real worker: every one COMPLETES, once.

In process: the API and a consuming worker on a PostgreSQL database of their own, the Python
client (``submit_many``, several requests) over the app. As an operator runs it: ``taskplatform
submit --file`` as a process against a running ``taskplatform dev``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskplatform.client import TaskPlatformClient
from taskplatform.models import OutboxStatus, TaskStatus
from taskplatform.runtime import Runtime
from tests.support.api import served
from tests.support.executables import Noop
from tests.support.runtime import eventually
from tests.support.server import ROOT, delete_topology_now, platform_env, served_topology, serving
from tests.support.services import RABBITMQ_URL, require_rabbitmq

pytestmark = pytest.mark.integration


async def test_every_bulk_submitted_task_completes_once_through_a_worker(
    make_runtime: Callable[..., Runtime], own_postgres_database_url: str, rabbitmq: Any
) -> None:
    runtime = make_runtime(role="dev", consume=True, relay=True, store_url=own_postgres_database_url)
    count = 2300  # three requests
    tasks = [
        {"task_type": "test_noop", "parameters": {"value": i}, "idempotency_key": f"k{i}" if i % 2 else None}
        for i in range(count)
    ]
    for item in tasks:
        if item["idempotency_key"] is None:
            del item["idempotency_key"]
    async with served(runtime) as app:
        transport = httpx.ASGITransport(app=app)
        async with TaskPlatformClient("http://api", transport=transport, timeout=60) as client:
            results = await client.submit_many(tasks)
            assert [r.outcome for r in results] == ["created"] * count
            ids = [r.task_id for r in results]

            async def all_completed() -> bool:
                counts = await runtime.store.count_by_status()
                return counts.get(TaskStatus.COMPLETED, 0) == count

            await eventually(all_completed, timeout=90, every=0.5)
            # the keyed half again: the same tasks, nothing new to run
            again = await client.submit_many([t for t in tasks if "idempotency_key" in t])
            assert {r.outcome for r in again} == {"existing"}
            assert [r.task_id for r in again] == ids[1::2]
            assert {r.status for r in again} == {TaskStatus.COMPLETED}
        for task_id, i in zip(ids, range(count), strict=True):
            task = await runtime.store.get(task_id)
            assert task is not None and task.status is TaskStatus.COMPLETED
            assert task.result == {"value": i} and Noop.calls[task_id] == 1
            assert task.outbox.status is OutboxStatus.PUBLISHED
        assert sum((await runtime.store.count_by_status()).values()) == count


@pytest.mark.slow
def test_submit_file_as_a_process_against_a_running_platform(tmp_path: Path) -> None:
    require_rabbitmq()
    prefix = f"bk{uuid.uuid4().hex[:8]}."
    env = platform_env(
        TASKPLATFORM_AUTH="disabled",
        TASKPLATFORM_AMQP_URL=RABBITMQ_URL,
        TASKPLATFORM_STORE_URL=f"sqlite+aiosqlite:///{tmp_path / 'tasks.db'}",
        TASKPLATFORM_TOPOLOGY_PREFIX=prefix,
        TASKPLATFORM_EXECUTOR_MODULES='["tests.support.executables"]',
        TASKPLATFORM_LOG_LEVEL="WARNING",
        TASKPLATFORM_SHUTDOWN_GRACE_SECONDS="2",
    )
    count = 1200
    lines = [json.dumps({"task_type": "test_noop", "parameters": {"value": i}}) for i in range(count)]
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(["", *lines]) + "\n", encoding="utf-8")
    try:
        with serving("dev", env, tmp_path / "server.log", ready_timeout=60) as base:
            done = subprocess.run(  # noqa: S603
                [sys.executable, "-m", "taskplatform.cli", "submit", "--file", str(path)],
                cwd=ROOT,
                env={**env, "TASKPLATFORM_API_URL": base},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            out = [json.loads(line) for line in done.stdout.splitlines()]
            assert [x["line"] for x in out] == list(range(2, count + 2))
            assert {x["outcome"] for x in out} == {"created"}
            assert done.stderr.splitlines()[-1] == (
                f"submitted {count} task(s) from {path} in 2 request(s): {count} created, 0 existing"
            )
            deadline = time.monotonic() + 90
            with httpx.Client(base_url=base, timeout=10) as http:
                while len(completed := _completed_ids(http)) < count:
                    assert time.monotonic() < deadline, f"{len(completed)} of {count} completed"
                    time.sleep(1)
            assert completed == {x["task_id"] for x in out}
    finally:
        delete_topology_now(served_topology(prefix))


def _completed_ids(http: httpx.Client) -> set[str]:
    """The ids of every COMPLETED task, page by page."""
    ids: set[str] = set()
    cursor = None
    while True:
        params: dict[str, str | int] = {"status": "COMPLETED", "view": "summary", "limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = http.get("/api/v1/tasks", params=params).json()
        ids.update(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return ids
