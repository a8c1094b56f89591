"""A worker's settings: how much it runs at once, its time limits, what it serves, its labels and
heartbeat in the fleet registry, its node queue and the agent's commands. Part of
``PlatformSettings`` (``taskplatform/settings.py``), which reads them from the environment with the
``TASKPLATFORM_`` prefix like every other setting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import NoDecode

from taskplatform.models.worker import check_labels, parse_labels


def _json_object_or_text(value: object, what: str) -> object:
    """A setting given as ``k=v,k=v`` or a JSON object: the parsed object when the text starts
    with ``{`` (ValueError naming ``what`` when it is not JSON), else the stripped text; a
    value that is not text as it is."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text.startswith("{"):
        return text
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not a JSON object of {what}: {exc}") from None


class WorkerSettings(BaseModel):
    """The worker's part of ``PlatformSettings`` (never built on its own)."""

    # worker
    prefetch: int = Field(
        default=32,
        ge=1,
        le=65535,
        description="Tasks a worker runs at once per queue group; each priority level's consumer may also "
        "hold this many unacked messages (up to PREFETCH × levels per group).",
    )
    task_timeout_seconds: float = Field(
        default=300.0, gt=0, description="Per-attempt timeout of executables that set none."
    )
    lease_seconds: float = Field(
        default=60.0, gt=0, description="A claim's lease; a running attempt renews it every third of this."
    )
    shutdown_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        description="In-flight work allowed to finish on SIGTERM; what remains is given back to the queue.",
    )
    store_outage_hold_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How long a worker holds a message and retries its store writes while the store is "
        "unreachable (well under RabbitMQ's consumer timeout); then it hands the message back.",
    )
    cancel_poll_seconds: float = Field(
        default=1.0, gt=0, description="How often a running attempt checks for a cancel request."
    )
    cancel_grace_seconds: float = Field(
        default=2.0, ge=0, description="How long a cancelled attempt gets to stop by itself."
    )
    executor_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Modules whose executables to register besides entry points: `a.tasks,b.tasks` "
        'or a JSON list `["a.tasks"]`.',
    )
    load_entry_points: bool = Field(
        default=True, description="Register the executables of the `taskplatform.executors` entry points."
    )
    worker_labels: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="This worker's labels in the fleet registry, what tasks may be aimed at: "
        '`region=eu,role=db` or a JSON object `{"role": "db"}`; keys and values are plain (letters, '
        "digits, `_ . -`).",
    )
    worker_max_concurrency: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="Attempts this worker runs at once at most, all queue groups and aimed work together "
        "(0: no cap beyond `PREFETCH` per queue group).",
    )
    worker_type_concurrency: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict,
        description="Attempts of a task type this worker runs at once at most: `run_command=2,resize=4` "
        'or a JSON object `{"run_command": 2}`; each at least 1. Other types are capped by their group only.',
    )
    worker_heartbeat_seconds: float = Field(
        default=5.0,
        ge=0.5,
        le=3600,
        description="How often a worker writes its record to the fleet registry (one small write); it counts "
        "as offline after 3 intervals without one.",
    )
    worker_record_retention_seconds: float = Field(
        default=7 * 24 * 3600.0,
        ge=0,
        description="How long the records of stopped or offline workers stay in the registry (0: for ever).",
    )
    node_queue_expires_seconds: float = Field(
        default=7 * 24 * 3600.0,
        ge=1,
        le=365 * 24 * 3600.0,
        description="How long a worker node's own queue (tasks aimed at it) outlives the node: the broker "
        "deletes it once it has had no consumer this long (`x-expires`; the queue's arguments, so "
        "changing it means deleting idle node queues first).",
    )
    agent_commands_file: Path | None = Field(
        default=None,
        description="The agent's allow-list of command templates (a `.json` or `.toml` file, checked at "
        "start-up): this worker then serves `run_command` (queue group `agent`); unset: it does not.",
    )
    agent_kill_grace_seconds: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="Seconds a `run_command` process group gets between SIGTERM and SIGKILL on time-out or "
        "cancel, for templates that set no `kill_grace_seconds` (on cancel, CANCEL_GRACE_SECONDS caps it).",
    )

    @field_validator("agent_commands_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("executor_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: object) -> object:
        """A comma-separated list (``a.tasks,b.tasks``) or a JSON list (``["a.tasks"]``)."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError as exc:
                raise ValueError(f"not a JSON list of module names: {exc}") from None
        return [name.strip() for name in text.split(",") if name.strip()]

    @field_validator("worker_labels", mode="before")
    @classmethod
    def _parse_labels(cls, value: object) -> object:
        """``region=eu,role=db`` or a JSON object; checked key by key (``models.worker.check_labels``)."""
        value = _json_object_or_text(value, "labels")
        if isinstance(value, str):
            return parse_labels(value)
        if isinstance(value, dict):
            return check_labels(value)
        return value

    @field_validator("worker_type_concurrency", mode="before")
    @classmethod
    def _parse_type_caps(cls, value: object) -> object:
        """``run_command=2,resize=4`` or a JSON object; every cap a whole number of at least 1."""
        value = _json_object_or_text(value, "caps")
        if isinstance(value, str):
            caps: dict[str, object] = {}
            for item in (part.strip() for part in value.split(",") if part.strip()):
                name, sep, number = (x.strip() for x in item.partition("="))
                if not sep or not name or not number.isdigit():
                    raise ValueError(f"{item!r}: write task_type=N, e.g. run_command=2")
                caps[name] = int(number)
            value = caps
        if isinstance(value, dict):
            for name, cap in value.items():
                if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
                    raise ValueError(f"the cap of {name!r} must be a whole number of at least 1, got {cap!r}")
        return value
