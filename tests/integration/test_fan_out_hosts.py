"""Commands fanned out to hosts, end to end: 20 worker processes (10 labelled ``role=db``), real
RabbitMQ and PostgreSQL, the agent's ``run_command``.

- ``mode: each`` to ``role=db`` runs once on each of the 10 and nowhere else; the parent shows 10
  per-host results with exit codes and outputs.
- Cancelling a running fan-out kills every child's process group (checked in ``/proc``, not by
  the code under test) and the parent ends CANCELLED.
- ``kill -9`` of one targeted worker mid-command: it is ``offline`` within 3 heartbeat intervals;
  its child, an at-most-once command, is dead-lettered (never run again: it may have run in
  part) naming the node; the parent ends COMPLETED_WITH_ERRORS.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskplatform.agent import agent_executable
from taskplatform.auth.principal import SYSTEM
from taskplatform.models import BackgroundTask, TaskStatus
from taskplatform.models.target import TaskTarget
from taskplatform.models.worker import MISSED_BEATS, WorkerState
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.store import MIN_MAX_CONNECTIONS
from taskplatform.submission import SubmitRequest
from taskplatform.tasks.registry import ExecutableRegistry
from tests.agent.processes import alive, group_of, read_pid, wait_for
from tests.support.executables import EXECUTABLES
from tests.support.runtime import eventually, running
from tests.support.services import fresh_postgres_database
from tests.support.worker_process import start_worker
from topology.spec import node_queue_name

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BEAT = 0.5
FINISHED = (TaskStatus.COMPLETED, TaskStatus.COMPLETED_WITH_ERRORS)
NODES = 20
DB = [f"db-{i:02d}" for i in range(10)]
WEB = [f"web-{i:02d}" for i in range(NODES - len(DB))]


def _commands(path: Path, pids: Path) -> Path:
    hold = 'echo $$ > "$1/$$.pid"; exec sleep "$2"'
    path.write_text(
        json.dumps(
            {
                "commands": [
                    {"name": "hello", "argv": ["/bin/echo", "hello"]},
                    {
                        "name": "hold",
                        "argv": ["/bin/sh", "-c", hold, "sh", str(pids), "{seconds}"],
                        "placeholders": {"seconds": {"type": "int", "min": 1, "max": 60}},
                        "timeout_seconds": 120,
                    },
                ]
            }
        )
    )
    return path


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_postgres_database("tp_fanout") as url:
        yield url


def _run(template: str, **args: Any) -> SubmitRequest:
    return SubmitRequest(
        task_type="run_command",
        parameters={"template": template, "args": args},
        target=TaskTarget(labels={"role": "db"}, mode="each"),
    )


async def _children(api: Runtime, parent_id: str) -> list[BackgroundTask]:
    return [t async for page in api.store.child_pages(parent_id) for t in page]


async def _status(api: Runtime, task_id: str) -> TaskStatus | None:
    task = await api.store.get(task_id)
    return task.status if task is not None else None


@pytest.mark.timeout(600)
async def test_commands_fanned_out_to_labelled_hosts(  # noqa: C901  (one fleet, three acts)
    make_settings: Any, database: str, tmp_path: Path, rabbitmq: Any
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    commands = _commands(tmp_path / "commands.json", pids)
    settings: PlatformSettings = make_settings(
        store_url=database,
        agent_commands_file=commands,
        reaper_interval_seconds=0.3,
        reaper_grace_seconds=0.5,
        lease_seconds=3.0,
    )
    registry = ExecutableRegistry([*EXECUTABLES, agent_executable(commands)])
    api = Runtime(settings, role="api", registry=registry, consume=False, relay=True)
    workers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        async with running(api):
            for node in DB + WEB:
                workers[node] = start_worker(
                    settings,
                    node_id=node,
                    worker_labels="role=db" if node in DB else "role=web",
                    worker_heartbeat_seconds=str(BEAT),
                    agent_commands_file=str(commands),
                    lease_seconds="3",
                    cancel_poll_seconds="0.2",
                    agent_kill_grace_seconds="1",
                    # 20 processes within PostgreSQL's 100 connections (with the API and the suite's)
                    store_max_connections=str(MIN_MAX_CONNECTIONS),
                )

            async def all_online() -> bool:
                now = api.store.now()
                records = [await api.store.get_worker(n) for n in workers]
                return all(
                    r is not None and r.online_at(now) and "run_command" in r.task_types for r in records
                )

            await eventually(all_online, timeout=180, every=0.5)

            # 1. once on each db host, nowhere else; 10 per-host results
            hello = await api.submitter.submit(_run("hello"))

            async def hello_done() -> bool:
                return await _status(api, hello.task.id) in (
                    TaskStatus.COMPLETED,
                    TaskStatus.COMPLETED_WITH_ERRORS,
                )

            await eventually(hello_done, timeout=60)
            assert await _status(api, hello.task.id) is TaskStatus.COMPLETED
            children = await _children(api, hello.task.id)
            assert sorted(c.execution_node_id or "" for c in children) == DB
            for child in children:
                assert child.status is TaskStatus.COMPLETED and child.retry_count == 0
                assert child.result is not None
                assert (child.result["exit_code"], child.result["stdout"]) == (0, "hello\n")
            parent = await api.store.get(hello.task.id)
            assert parent is not None and parent.sub_task_status_summary is not None
            assert (parent.sub_task_status_summary.total, parent.sub_task_status_summary.completed) == (
                10,
                10,
            )

            # 2. cancelling a running fan-out kills every child's process group
            held = await api.submitter.submit(_run("hold", seconds=60))
            await wait_for(lambda: len(list(pids.glob("*.pid"))) == len(DB), "every db host's command", 60)
            leaders = [read_pid(p) for p in pids.glob("*.pid")]
            assert all(pid is not None and alive(pid) and group_of(pid) == pid for pid in leaders)
            cancelled = await api.commands.cancel(held.task.id, SYSTEM)
            assert cancelled.status is TaskStatus.CANCELLED
            await wait_for(lambda: not any(alive(p) for p in leaders if p is not None), "no command left", 30)
            assert await _status(api, held.task.id) is TaskStatus.CANCELLED

            async def children_ended() -> bool:
                return all(c.status is TaskStatus.CANCELLED for c in await _children(api, held.task.id))

            await eventually(children_ended, timeout=30)
            for path in pids.glob("*.pid"):
                path.unlink()

            # 3. kill -9 of one host mid-command
            lost = await api.submitter.submit(_run("hold", seconds=4))
            await wait_for(lambda: len(list(pids.glob("*.pid"))) == len(DB), "every db host's command", 60)
            victim = DB[3]
            killed_at = asyncio.get_running_loop().time()
            workers[victim].send_signal(signal.SIGKILL)
            workers[victim].wait(timeout=10)

            async def offline() -> bool:
                record = await api.store.get_worker(victim)
                return record is not None and record.state is WorkerState.OFFLINE

            await eventually(offline, timeout=MISSED_BEATS * BEAT + 5)
            seen_offline_after = asyncio.get_running_loop().time() - killed_at
            print(f"{victim} offline {seen_offline_after:.2f} s after kill -9 (beat {BEAT} s)")

            async def lost_done() -> bool:
                return await _status(api, lost.task.id) is TaskStatus.COMPLETED_WITH_ERRORS

            await eventually(lost_done, timeout=60)
            by_node = {c.target.node if c.target else None: c for c in await _children(api, lost.task.id)}
            dead = by_node[victim]
            assert dead.status is TaskStatus.DEAD_LETTER and dead.error_info is not None
            assert dead.error_info.type == "WorkerLost" and victim in dead.error_info.message
            assert all(c.status is TaskStatus.COMPLETED for n, c in by_node.items() if n != victim)
            summary = (await api.store.get(lost.task.id)).sub_task_status_summary  # type: ignore[union-attr]
            assert summary is not None and (summary.completed, summary.dead_letter) == (9, 1)
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in workers.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for path in pids.glob("*.pid"):
            pid = read_pid(path)
            if pid is not None and alive(pid) and group_of(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
        channel = await rabbitmq.channel()
        for node in workers:
            await channel.queue_delete(node_queue_name(node, settings.topology_prefix))
        await channel.close()
