"""The fleet registry with real worker processes, RabbitMQ and PostgreSQL: a worker registers with
its labels and what it serves, beats, writes ``stopped`` on SIGTERM, and one killed outright is
seen offline within three heartbeat intervals and marked so by another process's sweep."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from taskplatform.models.worker import MISSED_BEATS, WorkerRecord, WorkerState
from taskplatform.runtime import Runtime
from tests.support.runtime import eventually, running
from tests.support.worker_process import start_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BEAT = 0.5


async def _worker(runtime: Runtime, node: str) -> WorkerRecord | None:
    return await runtime.store.get_worker(node)


async def _fleet_events(rabbitmq: Any, runtime: Runtime) -> Any:
    """A queue bound to every worker event of this test's events exchange."""
    channel = await rabbitmq.channel()
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(runtime.topology.events_exchange, routing_key="worker.#")
    return queue


async def _next_event(queue: Any, node: str) -> dict[str, Any]:
    """The next worker event about ``node``. The registry is the store's, shared by the tests on
    this database: the sweep here also announces other tests' workers gone (skipped)."""
    for _ in range(100):
        message = await queue.get(fail=False)
        if message is None:
            await asyncio.sleep(0.1)
            continue
        await message.ack()
        event = dict(json.loads(message.body))
        if event["worker"]["node_id"] == node:
            return event
    raise AssertionError(f"no worker event of {node} within 10 s")


async def test_a_worker_process_registers_beats_and_writes_stopped_on_sigterm(
    make_runtime: Callable[..., Runtime], rabbitmq: Any, request: pytest.FixtureRequest
) -> None:
    store_url = request.getfixturevalue("postgres_database_url")
    api = make_runtime(role="api", consume=False, store_url=store_url)
    async with running(api):
        events = await _fleet_events(rabbitmq, api)
        worker = start_worker(
            api.settings,
            node_id="db-node-1",
            worker_labels="role=db,region=eu",
            worker_heartbeat_seconds=str(BEAT),
            prefetch="4",
        )
        try:

            async def registered() -> bool:
                record = await _worker(api, "db-node-1")
                return record is not None and record.state is WorkerState.ONLINE

            await eventually(registered, timeout=30)
            first = await _worker(api, "db-node-1")
            assert first is not None
            assert first.labels == {"role": "db", "region": "eu"}
            assert first.pid == worker.pid and first.heartbeat_seconds == BEAT
            assert "test_side_effect" in first.task_types and first.queue_groups
            assert first.concurrency == 4 * len(first.queue_groups)
            assert first.online_at(api.store.now())

            async def beat_again() -> bool:
                record = await _worker(api, "db-node-1")
                return record is not None and record.last_seen_at > first.last_seen_at

            await eventually(beat_again, timeout=10)
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
        gone = await _worker(api, "db-node-1")
        assert gone is not None and gone.state is WorkerState.STOPPED
        assert not gone.online_at(api.store.now())
        online, stopped = await _next_event(events, "db-node-1"), await _next_event(events, "db-node-1")
        assert (online["type"], online["previous_state"], online["observed_by"]) == (
            "online",
            None,
            "db-node-1",
        )
        assert online["worker"]["labels"] == {"role": "db", "region": "eu"}
        assert (stopped["type"], stopped["previous_state"]) == ("stopped", "stopping")


async def test_a_killed_worker_is_offline_within_three_intervals_and_the_sweep_marks_it(
    make_runtime: Callable[..., Runtime], rabbitmq: Any, request: pytest.FixtureRequest
) -> None:
    store_url = request.getfixturevalue("postgres_database_url")
    # Another process's reaper sweeps the registry every 0.2 s.
    api = make_runtime(role="api", consume=False, store_url=store_url, reaper_interval_seconds=0.2)
    async with running(api):
        events = await _fleet_events(rabbitmq, api)
        victim = start_worker(api.settings, node_id="victim", worker_heartbeat_seconds=str(BEAT))
        try:

            async def online() -> bool:
                record = await _worker(api, "victim")
                return record is not None and record.online_at(api.store.now())

            await eventually(online, timeout=30)
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
        finally:
            if victim.poll() is None:
                victim.kill()

        async def offline() -> bool:
            record = await _worker(api, "victim")
            return record is not None and record.state is WorkerState.OFFLINE

        await eventually(offline, timeout=BEAT * MISSED_BEATS + 10)
        record = await _worker(api, "victim")
        assert record is not None and not record.online_at(api.store.now())
        # Presence lapses three intervals after the last beat, whoever reads it.
        assert (record.expires_at - record.last_seen_at).total_seconds() == BEAT * MISSED_BEATS
        assert record.state_changed_at >= record.expires_at
        offline_count = api.metrics.registry.get_sample_value(
            "taskplatform_worker_transitions_total", {"to": "offline"}
        )
        assert offline_count is not None and offline_count >= 1  # other tests' workers may be swept too
        offline_event = await _next_event(events, "victim")
        if offline_event["type"] == "online":  # published before the kill landed (or not: a race)
            offline_event = await _next_event(events, "victim")
        assert (offline_event["type"], offline_event["previous_state"]) == ("offline", "online")
        assert offline_event["observed_by"] == api.settings.node_id  # the sweeper, not the dead


async def test_a_second_worker_process_with_a_live_workers_node_id_refuses_to_start(
    make_runtime: Callable[..., Runtime], request: pytest.FixtureRequest
) -> None:
    store_url = request.getfixturevalue("postgres_database_url")
    api = make_runtime(role="api", consume=False, store_url=store_url)
    async with running(api):
        first = start_worker(api.settings, node_id="twin", worker_heartbeat_seconds=str(BEAT))
        second = None
        try:

            async def online() -> bool:
                record = await _worker(api, "twin")
                return record is not None and record.online_at(api.store.now())

            await eventually(online, timeout=30)
            held = await _worker(api, "twin")
            assert held is not None
            second = start_worker(
                api.settings, node_id="twin", worker_heartbeat_seconds=str(BEAT), stderr=subprocess.PIPE
            )
            _, err = await asyncio.to_thread(second.communicate, timeout=60)
            log = err.decode()
            assert second.returncode == 1, log
            assert f"node id 'twin' is in use by pid {first.pid} on {held.host}" in log, log
            assert "TASKPLATFORM_NODE_ID" in log, log
            # the first goes on beating, its record untouched by the second
            assert first.poll() is None
            await asyncio.sleep(2 * BEAT)
            record = await _worker(api, "twin")
            assert record is not None and record.pid == first.pid and record.online_at(api.store.now())
            assert record.last_seen_at > held.last_seen_at
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        process.kill()
