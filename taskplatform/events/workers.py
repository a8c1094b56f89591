"""Worker lifecycle events on the events exchange: a worker came online, went offline, stopped.

The public, versioned contract beside the task events (``external``): routing keys
``worker.online``, ``worker.offline`` and ``worker.stopped`` on the same exchange (bind
``worker.#`` to follow the fleet; ``task.#`` bindings never see them). Its JSON Schema is
generated (``python -m taskplatform.events.schema --event worker``) and committed under
``docs/events/``.

Each transition is published once, by the process that wrote it to the registry: the worker
for ``online`` and ``stopped``, the process whose sweep found it silent for ``offline``. The
event id is derived from the worker, the state and the moment it changed, so a publish retried
after a lost confirm repeats it: consumers dedupe on ``event_id``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from taskplatform.events.bridge import event_message
from taskplatform.messaging.publisher import TaskPublisher
from taskplatform.models.worker import WorkerRecord, WorkerState

WORKER_SCHEMA_VERSION: Literal["1"] = "1"
#: The namespace of the derived event ids.
_EVENT_IDS = uuid.UUID("6f1c2a4e-8b7d-4e0a-9c3f-5d2b1a0e7c64")

_CONFIG = ConfigDict(
    frozen=True, use_attribute_docstrings=True, json_schema_serialization_defaults_required=True
)


class WorkerEventType(str, Enum):
    """What happened to the worker; the last word of the routing key."""

    ONLINE = "online"
    OFFLINE = "offline"
    STOPPED = "stopped"


class WorkerSnapshot(BaseModel):
    """The worker's registry record as the transition left it."""

    model_config = _CONFIG

    node_id: str
    """The worker's node id (unique per process)."""
    host: str
    """Its host name."""
    pid: int
    """Its process id on that host."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Its labels (``WORKER_LABELS``), what tasks may be aimed at."""
    task_types: list[str] = Field(default_factory=list)
    """The task types it runs."""
    queue_groups: list[str] = Field(default_factory=list)
    """The queue groups it consumes."""
    concurrency: int
    """Attempts it runs at once at most."""
    running: int
    """Attempts it was running at its last heartbeat."""
    version: str
    """The platform version it runs."""
    started_at: datetime
    """When it started."""
    last_seen_at: datetime
    """Its last heartbeat (the store's clock)."""
    heartbeat_seconds: float
    """Its heartbeat interval; it counts as offline three intervals after the last one."""
    state: WorkerState
    """Its state after the event."""


class ExternalWorkerEvent(BaseModel):
    """One transition of one worker in the fleet registry, as published to the events exchange."""

    model_config = _CONFIG

    schema_version: Literal["1"] = WORKER_SCHEMA_VERSION
    """Version of this format; additive changes keep it, breaking ones bump it."""
    event_id: str
    """Unique id of the transition; a retried publish repeats it (dedupe on it)."""
    type: WorkerEventType
    """What happened; also the last word of the routing key."""
    routing_key: str
    """worker.<type>, as published."""
    occurred_at: datetime
    """When the registry recorded the change (UTC, the store's clock)."""
    previous_state: WorkerState | None
    """The state before (null: the worker was not registered)."""
    worker: WorkerSnapshot
    """The worker after the event."""
    observed_by: str | None
    """The node that recorded the transition: the worker itself, or the process whose sweep found it
    silent."""


def to_worker_event(
    record: WorkerRecord, previous: WorkerState | None, *, observed_by: str | None
) -> ExternalWorkerEvent:
    """The event for ``record``'s transition from ``previous``; ValueError for a state no event
    announces (``stopping``)."""
    kind = WorkerEventType(record.state.value)
    occurred = record.state_changed_at
    return ExternalWorkerEvent(
        event_id=str(uuid.uuid5(_EVENT_IDS, f"{record.node_id}|{kind.value}|{occurred.isoformat()}")),
        type=kind,
        routing_key=f"worker.{kind.value}",
        occurred_at=occurred,
        previous_state=previous,
        worker=WorkerSnapshot(
            node_id=record.node_id,
            host=record.host,
            pid=record.pid,
            labels=record.labels,
            task_types=record.task_types,
            queue_groups=record.queue_groups,
            concurrency=record.concurrency,
            running=record.running,
            version=record.version,
            started_at=record.started_at,
            last_seen_at=record.last_seen_at,
            heartbeat_seconds=record.heartbeat_seconds,
            state=record.state,
        ),
        observed_by=observed_by,
    )


class WorkerEventPublisher:
    """Publishes worker transitions to the events exchange (an ``OnTransition`` callback).

    Confirmed, with the publisher's retries of transient faults; not mandatory (an exchange
    nothing is bound to drops it, as for task events). A publish that still fails raises, and
    the caller logs it: the registry holds the state either way.
    """

    def __init__(self, publisher: TaskPublisher, exchange: str, *, node_id: str | None) -> None:
        self._publisher = publisher
        self._exchange = exchange
        self._node_id = node_id
        #: Events confirmed by the broker.
        self.published = 0

    async def __call__(self, record: WorkerRecord, previous: WorkerState | None) -> None:
        event = to_worker_event(record, previous, observed_by=self._node_id)
        message = event_message(
            event.model_dump_json().encode(),
            event_id=event.event_id,
            routing_key=event.routing_key,
            occurred_at=event.occurred_at,
            schema_version=WORKER_SCHEMA_VERSION,
        )
        await self._publisher.publish_raw(
            self._exchange,
            event.routing_key,
            message,
            what=f"worker event {event.routing_key} of {record.node_id}",
            mandatory=False,
        )
        self.published += 1
