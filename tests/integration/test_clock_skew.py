"""Leases use the store's clock: a worker whose clock is 70 s off runs long tasks beside a worker
with a true clock, on PostgreSQL, and neither reaps nor takes over the other's tasks.

The skewed worker is a real process under libfaketime (preloaded with ``FAKETIME=+70s``; its
monotonic clock is left alone, as a host's clock error would leave it). The test checks the process does
see the skew: its measured offset to the store (its metrics) is the skew, reversed. Tasks run
well past a lease and a reaper grace, so leases are renewed several times and both reapers (one
per process, grace 0.5 s) look at them many times. A worker 70 s behind used to have every
task over ~10 s reaped while it ran; one 70 s ahead reaped every other worker's tasks.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from taskplatform.models import BackgroundTask, TaskMessage, TaskStatus
from taskplatform.runtime import Runtime
from tests.support.runtime import eventually, running
from tests.support.tcp_proxy import free_port
from tests.support.worker_process import FAKETIME, start_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SKEW = 70
LEASE = 3.0
GRACE = 0.5
#: Each task runs this long: well over a lease plus the reaper's grace (renewed four times).
RUNS_FOR = 4 * (LEASE + GRACE)
#: Tasks per worker (each worker runs its share at once).
PER_WORKER = 3
_OFFSET = re.compile(r"^taskplatform_store_clock_offset_seconds (\S+)$", re.MULTILINE)


def _require_faketime() -> None:
    if FAKETIME is None:
        message = "libfaketime is not installed: run scripts/faketime-tool (scripts/test does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _scrape_offset(port: int) -> float | None:
    """The worker's measured offset to the store's clock, from its metrics; None before it serves."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:  # noqa: S310
            body = answer.read().decode()
    except OSError:
        return None
    found = _OFFSET.search(body)
    return float(found.group(1)) if found else None


async def _consumers(rabbitmq: Any, runtime: Runtime) -> int:
    channel = await rabbitmq.channel()
    queue = await channel.declare_queue(runtime.topology.work_queues[0].queue, passive=True)
    await channel.close()
    return int(queue.declaration_result.consumer_count)


async def _all_finished(runtime: Runtime, tasks: list[BackgroundTask]) -> bool:
    for task in tasks:
        current = await runtime.store.get(task.id)
        if current is None or current.status not in (TaskStatus.COMPLETED, TaskStatus.DEAD_LETTER):
            return False
    return True


@pytest.mark.timeout(240)  # the waits below add up past the suite's 120 s before their own failures
@pytest.mark.parametrize("offset", [f"+{SKEW}s", f"-{SKEW}s"], ids=["ahead", "behind"])
async def test_a_worker_whose_clock_is_off_by_70s_runs_long_tasks_without_takeover(
    make_runtime: Callable[..., Runtime],
    rabbitmq: Any,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    offset: str,
) -> None:
    _require_faketime()
    store_url = request.getfixturevalue("own_postgres_database_url")
    effects = tmp_path / "effects.txt"
    log_file = tmp_path / "skewed.log"
    port = free_port()
    quick = {"reaper_interval_seconds": 0.5, "reaper_grace_seconds": GRACE}
    steady = make_runtime(
        node_id="steady", store_url=store_url, lease_seconds=LEASE, prefetch=PER_WORKER, **quick
    )
    tasks = [
        BackgroundTask(task_type="test_side_effect", parameters={"path": str(effects), "sleep": RUNS_FOR})
        for _ in range(2 * PER_WORKER)
    ]
    async with running(steady):
        with log_file.open("wb") as log:
            skewed = start_worker(
                steady.settings,
                node_id="skewed",
                clock_offset=offset,
                stderr=log,
                lease_seconds=str(LEASE),
                prefetch=str(PER_WORKER),
                metrics_port=str(port),
                **{k: str(v) for k, v in quick.items()},
            )
        try:
            # the process sees its clock off: it measured the store's clock the other way round.
            # The wait is the process's start under faketime and coverage, not a bound under test:
            # a full run on a slow host took over 30 s (alone, the whole test takes about 20 s)
            seen: list[float] = []
            try:
                await eventually(lambda: _offset_measured(port, seen), timeout=90)
            except AssertionError:
                raise AssertionError(
                    "the skewed worker reported no clock offset in 90 s; its log, and the stacks of "
                    f"its threads:\n{await _stacks_of(skewed, log_file)}"
                ) from None
            measured = seen[-1]  # the scrape that answered (a later one may time out on a busy host)
            expected = -float(offset.removesuffix("s"))
            assert abs(measured - expected) < 1.0, f"measured {measured:+.3f} s, expected {expected:+} s"
            await eventually(lambda: _has_consumers(rabbitmq, steady, 2), timeout=20)

            await steady.store.create_many(tasks)
            published = await steady.publisher.publish_many([TaskMessage.for_task(t) for t in tasks])
            assert published == [None] * len(tasks)
            await eventually(lambda: _all_finished(steady, tasks), timeout=RUNS_FOR * 3 + 20)
        finally:
            skewed.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(skewed.wait, 20)
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    "the skewed worker did not stop within 20 s of SIGTERM; its log, and the stacks "
                    f"of its threads:\n{await _stacks_of(skewed, log_file)}"
                ) from None
            finally:
                if skewed.poll() is None:
                    skewed.kill()
        done = [await steady.store.get(t.id) for t in tasks]
    worker_log = log_file.read_text(errors="replace")
    assert "off the store's" in worker_log, worker_log  # the skew was logged as a WARNING
    assert "reaped task" not in worker_log, worker_log
    assert steady.reaper.reaped == 0
    for task in done:
        assert task is not None
        assert task.status is TaskStatus.COMPLETED, (task.status, task.execution_node_id, task.error_info)
        assert task.retry_count == 0 and task.error_info is None, task.error_info  # no WorkerLost
    assert {t.execution_node_id for t in done if t is not None} == {"steady", "skewed"}
    runs = Counter(line.split()[0] for line in effects.read_text().splitlines())
    assert runs == {t.id: 1 for t in tasks}, runs  # each ran once: no takeover, no second attempt


async def _stacks_of(process: subprocess.Popen[bytes], log_file: Path) -> str:
    """Stop a stuck worker with SIGABRT: Python's fault handler (``PYTHONFAULTHANDLER``, set for
    every worker process the tests start) writes each thread's stack to its log first."""
    if process.poll() is None:
        process.send_signal(signal.SIGABRT)
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
    return log_file.read_text(errors="replace")[-20_000:]


async def _offset_measured(port: int, seen: list[float]) -> bool:
    measured = await asyncio.to_thread(_scrape_offset, port)
    if measured is not None:
        seen.append(measured)
    return measured is not None


async def _has_consumers(rabbitmq: Any, runtime: Runtime, n: int) -> bool:
    return await _consumers(rabbitmq, runtime) >= n
