"""Metrics, logs and queue figures against real RabbitMQ: what a worker's /metrics shows after
a known mix of outcomes, request metrics on the API, task context in JSON log lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from taskplatform.logsetup import JsonFormatter, TaskContextFilter
from taskplatform.models import TERMINAL
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.submission import SubmitRequest
from taskplatform.tasks.executable import BackgroundTaskExecutable, TaskContext
from taskplatform.tasks.registry import ExecutableRegistry
from tests.support.api import client_of, served
from tests.support.runtime import eventually, running
from tests.support.tcp_proxy import free_port
from tests.support.worker_process import ROOT

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(scrape: Samples, name: str, **labels: str) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


def total(scrape: Samples, name: str) -> float:
    return sum(v for (n, _), v in scrape.items() if n == name)


async def _all_finished(runtime: Runtime, ids: list[str]) -> bool:
    tasks = [await runtime.store.get(i) for i in ids]
    return all(t is not None and t.status in TERMINAL for t in tasks)


async def test_a_workers_metrics_show_exactly_the_outcomes_of_100_tasks(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    worker = make_runtime(metrics_port=0, retry_initial_delay_seconds=0.5, retry_jitter_seconds=0)
    async with running(worker):
        requests = [SubmitRequest(task_type="test_noop", parameters={"value": i}) for i in range(80)]
        requests += [SubmitRequest(task_type="test_flaky", parameters={"fail_times": 1}) for _ in range(10)]
        requests += [SubmitRequest(task_type="test_boom") for _ in range(10)]
        ids = [s.task.id for s in await worker.submitter.submit_many(requests)]
        await eventually(lambda: _all_finished(worker, ids), timeout=60)
        assert worker.metrics_server is not None
        url = f"http://127.0.0.1:{worker.metrics_server.port}/metrics"

        async def counted() -> bool:  # observers get events just after the fact
            scrape = samples(httpx.get(url).text)
            return total(scrape, "taskplatform_tasks_finished_total") >= 100

        await eventually(counted, timeout=10)
        response = httpx.get(url)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    scrape = samples(response.text)
    submitted = "taskplatform_tasks_submitted_total"
    assert value(scrape, submitted, task_type="test_noop") == 80
    assert value(scrape, submitted, task_type="test_flaky") == 10
    assert value(scrape, submitted, task_type="test_boom") == 10
    finished = "taskplatform_tasks_finished_total"
    assert value(scrape, finished, task_type="test_noop", status="COMPLETED") == 80
    assert value(scrape, finished, task_type="test_flaky", status="COMPLETED") == 10
    assert value(scrape, finished, task_type="test_boom", status="DEAD_LETTER") == 10
    assert total(scrape, finished) == 100
    assert value(scrape, "taskplatform_task_retries_total", task_type="test_flaky") == 10
    assert total(scrape, "taskplatform_task_retries_total") == 10
    dead = "taskplatform_dead_letters_total"
    assert value(scrape, dead, task_type="test_boom", reason="non-retryable") == 10
    assert total(scrape, dead) == 10
    assert total(scrape, "taskplatform_task_duration_seconds_count") == 100
    durations = "taskplatform_task_duration_seconds_count"
    assert value(scrape, durations, task_type="test_boom", status="DEAD_LETTER") == 10
    assert value(scrape, durations, task_type="test_flaky", status="COMPLETED") == 10
    assert total(scrape, "taskplatform_task_queue_wait_seconds_count") == 100
    assert value(scrape, "taskplatform_task_queue_wait_seconds_count", task_type="test_noop") == 80
    assert total(scrape, "taskplatform_tasks_in_progress") == 0
    assert total(scrape, "taskplatform_event_subscriber_errors_total") == 0
    # outcomes that did not happen are series at zero (so rate() sees their first increase)
    assert ((finished, (("status", "CANCELLED"), ("task_type", "test_noop")))) in scrape
    assert value(scrape, finished, task_type="test_noop", status="CANCELLED") == 0
    for (name, labels), _ in scrape.items():  # no task id ever becomes a label
        assert all(key != "task_id" and val not in ids for key, val in labels), (name, labels)


async def test_the_api_counts_requests_by_route_template_and_serves_metrics(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    runtime = make_runtime(role="api", consume=False)
    async with served(runtime) as app, client_of(app) as client:
        created = await client.post("/api/v1/tasks", json={"task_type": "test_noop"})
        task_id = created.json()["task_id"]
        assert (await client.get(f"/api/v1/tasks/{task_id}")).status_code == 200
        assert (await client.get("/api/v1/tasks/missing")).status_code == 404
        assert (await client.get("/no/such/path")).status_code == 404
        assert (await client.request("BREW", "/api/v1/tasks")).status_code == 405
        for path in ("/docs", "/openapi.json", "/redoc"):  # FastAPI's own pages: routes too
            assert (await client.get(path)).status_code == 200
        scrape = samples((await client.get("/metrics")).text)
    requests = "taskplatform_api_requests_total"
    assert value(scrape, requests, method="POST", route="/api/v1/tasks", status="201") == 1
    assert value(scrape, requests, method="GET", route="/api/v1/tasks/{task_id}", status="200") == 1
    assert value(scrape, requests, method="GET", route="/api/v1/tasks/{task_id}", status="404") == 1
    assert value(scrape, requests, method="GET", route="unmatched", status="404") == 1  # not the raw path
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert value(scrape, requests, method="GET", route=path, status="200") == 1
    assert value(scrape, requests, method="GET", route="unmatched", status="200") == 0
    assert sum(v for (n, labels), v in scrape.items() if n == requests and ("method", "OTHER") in labels) == 1
    assert not any(("method", "BREW") in labels for _, labels in scrape)  # any token: no new series
    durations = "taskplatform_api_request_duration_seconds_count"
    assert value(scrape, durations, method="GET", route="/api/v1/tasks/{task_id}") == 2
    assert value(scrape, "taskplatform_tasks_submitted_total", task_type="test_noop") == 1


class Empty(BaseModel):
    pass


#: Opened by the test that holds ``test_held`` tasks running.
RELEASE = asyncio.Event()


class Held(BackgroundTaskExecutable[Empty, Empty]):
    """Runs until the test releases it."""

    task_type = "test_held"
    Params = Empty
    Result = Empty

    async def execute(self, ctx: TaskContext[Empty]) -> Empty:
        await RELEASE.wait()
        return Empty()


async def test_in_progress_counts_the_attempts_running_now(
    make_runtime: Callable[..., Runtime], registry: ExecutableRegistry, rabbitmq: Any
) -> None:
    registry.register(Held)
    RELEASE.clear()
    worker = make_runtime(metrics_port=0)
    async with running(worker):
        assert worker.metrics_server is not None
        url = f"http://127.0.0.1:{worker.metrics_server.port}/metrics"

        def in_progress() -> float:
            return value(
                samples(httpx.get(url).text), "taskplatform_tasks_in_progress", task_type="test_held"
            )

        async def running_count(n: int) -> bool:
            return await asyncio.to_thread(in_progress) == n

        ids = [
            s.task.id for s in await worker.submitter.submit_many([SubmitRequest(task_type="test_held")] * 3)
        ]
        await eventually(lambda: running_count(3), timeout=10)
        RELEASE.set()
        await eventually(lambda: _all_finished(worker, ids), timeout=10)
        await eventually(lambda: running_count(0), timeout=5)


class LoggyParams(BaseModel):
    tag: str = "one"


class Loggy(BackgroundTaskExecutable[LoggyParams, LoggyParams]):
    """Logs through plain ``logging``, as any library code would, twice with a pause between, so
    the lines of tasks running at once interleave."""

    task_type = "test_loggy"
    Params = LoggyParams
    Result = LoggyParams

    async def execute(self, ctx: TaskContext[LoggyParams]) -> LoggyParams:
        tag = ctx.parameters.tag
        logging.getLogger("some.library").warning("inside the executable", extra={"tag": tag})
        await asyncio.sleep(0.2)
        logging.getLogger("some.library").warning("inside the executable", extra={"tag": tag})
        return ctx.parameters


async def test_a_line_logged_inside_an_executable_carries_its_task_in_json(
    make_runtime: Callable[..., Runtime], registry: ExecutableRegistry, rabbitmq: Any
) -> None:
    registry.register(Loggy)
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(TaskContextFilter())
    logging.getLogger().addHandler(handler)
    try:
        worker = make_runtime(log_json=True)
        async with running(worker):
            requests = [SubmitRequest(task_type="test_loggy", parameters={"tag": t}) for t in ("a", "b")]
            ids = {s.task.parameters["tag"]: s.task.id for s in await worker.submitter.submit_many(requests)}
            await eventually(lambda: _all_finished(worker, list(ids.values())), timeout=10)
            logging.getLogger("some.library").warning("outside any task")
    finally:
        logging.getLogger().removeHandler(handler)
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    inside = [r for r in records if r["message"] == "inside the executable"]
    assert [r["tag"] for r in inside] == ["a", "b", "a", "b"]  # the two ran at once
    for record in inside:  # each line carries its own task, not the other's
        assert record["task_id"] == ids[record["tag"]] and record["task_type"] == "test_loggy"
        assert record["attempt"] == 0 and record["node_id"] == worker.settings.node_id
        assert record["logger"] == "some.library"
    (outside,) = [r for r in records if r["message"] == "outside any task"]
    assert "task_id" not in outside and "task_type" not in outside  # the context does not leak


@pytest.mark.slow
async def test_several_api_processes_report_every_processs_requests(
    make_settings: Callable[..., PlatformSettings], rabbitmq: Any, tmp_path: Path
) -> None:
    settings = make_settings()
    port = free_port()
    env = {
        **os.environ,
        "TASKPLATFORM_AMQP_URL": settings.amqp_url,
        "TASKPLATFORM_STORE_URL": settings.store_url,
        "TASKPLATFORM_TOPOLOGY_PREFIX": settings.topology_prefix,
        "TASKPLATFORM_AUTH": "disabled",
        "TASKPLATFORM_API_PROCESSES": "2",
        "TASKPLATFORM_API_PORT": str(port),
        "TASKPLATFORM_LOG_LEVEL": "WARNING",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    api = subprocess.Popen([sys.executable, "-m", "taskplatform.cli", "api"], cwd=ROOT, env=env)  # noqa: S603
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:

            async def up() -> bool:
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(up, timeout=60, every=0.2)
            for _ in range(40):  # new connections: both processes answer some
                async with httpx.AsyncClient(base_url=base) as fresh:
                    assert (await fresh.get("/healthz")).status_code == 200
            scrapes = [samples((await client.get("/metrics")).text) for _ in range(3)]
    finally:
        api.terminate()
        await asyncio.to_thread(api.wait, 30)
    healthz = [
        value(s, "taskplatform_api_requests_total", method="GET", route="/healthz", status="200")
        for s in scrapes
    ]
    assert healthz == [40, 40, 40]  # whichever process answered the scrape, it counted both
    assert len(list((tmp_path / "metrics").glob("counter_*.db"))) >= 2  # two processes wrote counts
    for scrape in scrapes:  # each scrape shows the process metrics of both, by pid
        memory = {
            dict(labels).get("pid", ""): v
            for (n, labels), v in scrape.items()
            if n == "process_resident_memory_bytes"
        }
        assert len(memory) == 2 and "" not in memory and all(v > 0 for v in memory.values())
        assert all(value(scrape, "process_cpu_seconds_total", pid=pid) > 0 for pid in memory)
        assert any(n == "python_info" for n, _ in scrape)
        assert not any(n.startswith("python_gc_") for n, _ in scrape)  # unreadable across processes
