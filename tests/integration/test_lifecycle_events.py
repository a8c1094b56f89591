"""Lifecycle events end to end: a queue bound with ``task.#`` sees every task's life, in order."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import aio_pika
import pytest
from jsonschema import Draft202012Validator

from taskplatform.auth import SYSTEM
from taskplatform.events.schema import DEFAULT_PATH
from taskplatform.runtime import Runtime
from taskplatform.submission import SubmitRequest
from tests.support.runtime import eventually, running
from tests.support.services import RABBITMQ_URL

pytestmark = pytest.mark.integration

TERMINAL_EVENTS = {"completed", "dead_lettered", "cancelled"}
#: Which event may follow which in one task's life (as published by one process).
FOLLOWS: dict[str, set[str]] = {
    "submitted": {"started", "cancelled", "dead_lettered"},
    "started": {"progress", "waiting", "retrying", "completed", "failed", "cancelled", "requeued"},
    "progress": {"progress", "waiting", "retrying", "completed", "failed", "cancelled", "requeued"},
    "waiting": {"completed", "cancelled"},
    "retrying": {"started", "cancelled"},
    "requeued": {"started", "cancelled"},
    "failed": {"dead_lettered"},
}


async def test_every_task_publishes_submitted_started_then_a_terminal_event_in_order_and_valid(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    validator = Draft202012Validator(json.loads(DEFAULT_PATH.read_text(encoding="utf-8")))
    runtime = make_runtime(cancel_poll_seconds=0.1, progress_interval_seconds=0.05)
    received: dict[str, list[dict[str, Any]]] = defaultdict(list)
    keys: dict[str, list[str]] = defaultdict(list)
    sink = await aio_pika.connect(RABBITMQ_URL)
    try:
        channel = await sink.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        async with running(runtime):
            await queue.bind(runtime.topology.events_exchange, routing_key="task.#")

            async def collect(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                body = json.loads(message.body)
                received[body["task"]["id"]].append(body)
                keys[body["task"]["id"]].append(message.routing_key or "")
                await message.ack()

            await queue.consume(collect)
            submit = runtime.submitter.submit
            plain = [
                await submit(SubmitRequest(task_type="test_noop", parameters={"value": i})) for i in range(10)
            ]
            flaky = await submit(SubmitRequest(task_type="test_flaky", parameters={"fail_times": 1}))
            boom = await submit(SubmitRequest(task_type="test_boom", parameters={}))
            chatty = await submit(
                SubmitRequest(task_type="test_chatty", parameters={"updates": 50, "pause": 0.01})
            )
            parent = await submit(
                SubmitRequest(task_type="test_fanout", parameters={"children": [{"value": 1}, {"value": 2}]})
            )
            slow = await submit(SubmitRequest(task_type="test_cooperative", parameters={}))
            await eventually(lambda: _has(received, slow.task.id, "started"), timeout=10)
            await runtime.commands.cancel(slow.task.id, SYSTEM)
            ids = [s.task.id for s in (*plain, flaky, boom, chatty, parent, slow)]

            async def all_terminal() -> bool:
                children = (await runtime.store.get(parent.task.id)).result  # type: ignore[union-attr]
                done = all(_ended(received, i) for i in ids)
                return done and children is not None and len(received) >= len(ids) + 2

            await eventually(all_terminal, timeout=30)
            await asyncio.sleep(0.3)  # anything published after a terminal event would show now
    finally:
        await sink.close()

    assert len(received) == len(ids) + 2  # the parent's two children too
    for task_id, events in received.items():
        names = [e["type"] for e in events]
        assert names[0] == "submitted" and names[1] == "started", (task_id, names)
        assert names[-1] in TERMINAL_EVENTS and sum(n in TERMINAL_EVENTS for n in names) == 1, names
        for before, after in zip(names, names[1:], strict=False):
            assert after in FOLLOWS[before], (task_id, names)
        sequences = [e["sequence"] for e in events]
        assert sequences == sorted(sequences), (task_id, sequences)
        for event, key in zip(events, keys[task_id], strict=True):
            validator.validate(event)
            assert key == f"task.{event['task']['type']}.{event['type']}"
    names_of = {i: [e["type"] for e in received[i]] for i in ids}
    assert names_of[flaky.task.id] == ["submitted", "started", "retrying", "started", "completed"]
    assert names_of[boom.task.id] == ["submitted", "started", "failed", "dead_lettered"]
    assert names_of[slow.task.id] == ["submitted", "started", "cancelled"]
    assert names_of[parent.task.id][-2:] == ["waiting", "completed"]
    assert "progress" in names_of[chatty.task.id]
    assert received[parent.task.id][-1]["task"]["status"] == "COMPLETED"
    assert received[parent.task.id][-1]["sub_tasks"]["completed"] == 2


def _has(received: dict[str, list[dict[str, Any]]], task_id: str, name: str) -> Any:
    async def check() -> bool:
        return any(e["type"] == name for e in received.get(task_id, []))

    return check()


def _ended(received: dict[str, list[dict[str, Any]]], task_id: str) -> bool:
    events = received.get(task_id, [])
    return bool(events) and events[-1]["type"] in TERMINAL_EVENTS
