"""Worker lifecycle events: the external format and its committed JSON Schema, and the publisher
on a real broker (routed by ``worker.<type>`` on the events exchange, confirmed, not mandatory)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from jsonschema import Draft202012Validator

from taskplatform.events.bridge import HEADER_SCHEMA_VERSION
from taskplatform.events.schema import WORKER_PATH, main, render
from taskplatform.events.workers import (
    ExternalWorkerEvent,
    WorkerEventType,
    to_worker_event,
)
from taskplatform.models import utcnow
from taskplatform.models.worker import WorkerRecord, WorkerState
from taskplatform.runtime import Runtime
from tests.support.runtime import running


def record(state: WorkerState = WorkerState.ONLINE, **changes: Any) -> WorkerRecord:
    now = utcnow()
    fields: dict[str, Any] = {
        "node_id": "db-1",
        "host": "host-1",
        "pid": 10,
        "labels": {"role": "db"},
        "task_types": ["run_command"],
        "queue_groups": ["default"],
        "concurrency": 4,
        "running": 1,
        "version": "0.1.0",
        "started_at": now,
        "last_seen_at": now,
        "heartbeat_seconds": 5.0,
        "expires_at": now + timedelta(seconds=15),
        "state": state,
        "state_changed_at": now,
    }
    fields.update(changes)
    return WorkerRecord.model_validate(fields)


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json.loads(WORKER_PATH.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@pytest.mark.parametrize(
    ("state", "previous"),
    [
        (WorkerState.ONLINE, None),
        (WorkerState.ONLINE, WorkerState.OFFLINE),
        (WorkerState.OFFLINE, WorkerState.ONLINE),
        (WorkerState.STOPPED, WorkerState.STOPPING),
    ],
)
def test_every_transition_is_an_event_valid_against_the_committed_schema(
    state: WorkerState, previous: WorkerState | None, validator: Draft202012Validator
) -> None:
    event = to_worker_event(record(state), previous, observed_by="api-1")
    assert event.type is WorkerEventType(state.value) and event.routing_key == f"worker.{state.value}"
    assert event.previous_state is previous and event.observed_by == "api-1"
    payload = json.loads(event.model_dump_json())
    validator.validate(payload)
    assert payload["worker"]["labels"] == {"role": "db"}


def test_a_tampered_worker_event_does_not_validate(validator: Draft202012Validator) -> None:
    payload = json.loads(to_worker_event(record(), None, observed_by=None).model_dump_json())
    payload["type"] = "exploded"
    assert list(validator.iter_errors(payload))


def test_the_event_id_repeats_for_one_transition_and_differs_for_another() -> None:
    one = record()
    again = to_worker_event(one, None, observed_by="a").event_id
    assert to_worker_event(one, None, observed_by="b").event_id == again  # a retried publish
    later = one.model_copy(update={"state_changed_at": one.state_changed_at + timedelta(seconds=1)})
    assert to_worker_event(later, None, observed_by="a").event_id != again
    offline = one.model_copy(update={"state": WorkerState.OFFLINE})
    assert to_worker_event(offline, None, observed_by="a").event_id != again


def test_a_stopping_worker_has_no_event() -> None:
    with pytest.raises(ValueError, match="stopping"):
        to_worker_event(record(WorkerState.STOPPING), WorkerState.ONLINE, observed_by=None)


def test_the_committed_worker_schema_is_the_generated_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert WORKER_PATH.read_text(encoding="utf-8") == render("worker")
    assert main(["--event", "worker", "--check"]) == 0
    stale = tmp_path / "worker.json"
    stale.write_text(render("worker").replace("Its host name.", "The host."), encoding="utf-8")
    assert main(["--event", "worker", "--check", "--path", str(stale)]) == 1
    assert "ExternalWorkerEvent" in capsys.readouterr().err
    assert main(["--event", "worker", "--check", "--path", str(tmp_path / "missing.json")]) == 1
    assert "--event worker --write" in capsys.readouterr().err
    assert main(["--event", "worker", "--write", "--path", str(stale)]) == 0
    assert main(["--event", "worker", "--check", "--path", str(stale)]) == 0
    assert ExternalWorkerEvent.model_json_schema()["properties"]["routing_key"]


@pytest.mark.integration
async def test_the_publisher_routes_worker_events_on_the_events_exchange(
    make_runtime: Callable[..., Runtime], rabbitmq: aio_pika.abc.AbstractRobustConnection
) -> None:
    api = make_runtime(role="api", consume=False)
    async with running(api):
        assert api.worker_events is not None
        await api.worker_events(record(WorkerState.ONLINE), None)  # nothing bound: dropped, no error
        channel = await rabbitmq.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(api.topology.events_exchange, routing_key="worker.#")
        offline = record(WorkerState.OFFLINE)
        await api.worker_events(offline, WorkerState.ONLINE)
        message = await queue.get(timeout=5)
        await message.ack()
        assert message.routing_key == "worker.offline" and message.content_type == "application/json"
        assert message.headers[HEADER_SCHEMA_VERSION] == "1"
        body = json.loads(message.body)
        assert body["type"] == "offline" and body["previous_state"] == "online"
        assert body["worker"]["node_id"] == "db-1" and body["observed_by"] == api.settings.node_id
        assert message.message_id == body["event_id"]
        assert api.worker_events.published == 2
        await channel.close()


@pytest.mark.integration
def test_with_lifecycle_events_off_no_worker_event_is_published(make_runtime: Callable[..., Runtime]) -> None:
    assert make_runtime(role="api", consume=False, events_bridge_enabled=False).worker_events is None
