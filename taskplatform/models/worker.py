"""A worker process as the fleet registry keeps it: who it is, what it serves, when it was last seen.

Each worker writes its own record on start and then every ``heartbeat_seconds`` (one small write
per interval, never per task). Its presence is judged on the store's clock: a record is *online*
while its state is ``online`` or ``stopping`` and ``expires_at`` (the last beat plus three
intervals) lies ahead; the reaper's sweep turns records past ``expires_at`` into ``offline``, one
process winning each transition. A worker that stops cleanly writes ``stopped`` itself.

Labels (``region=eu,role=db``) are what tasks will be aimed at: keys and values are short and
plain (``LABEL_PATTERN``), so they can be matched exactly in every store.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from taskplatform.models.labels import (
    LABEL_KEY_PATTERN,
    LABEL_VALUE_PATTERN,
    MAX_LABELS,
    Labels,
    check_labels,
    parse_labels,
)
from taskplatform.models.task import utcnow

__all__ = [
    "LABEL_KEY_PATTERN",
    "LABEL_VALUE_PATTERN",
    "MAX_LABELS",
    "MISSED_BEATS",
    "PRESENT",
    "Labels",
    "WorkerRecord",
    "WorkerState",
    "check_labels",
    "parse_labels",
]

#: A worker is offline once this many heartbeat intervals pass without a beat.
MISSED_BEATS = 3


class WorkerState(str, Enum):
    """What a worker's record says of it (``offline`` is written by the sweep, not the worker)."""

    ONLINE = "online"  # heartbeating
    STOPPING = "stopping"  # shutting down: finishing its running attempts, taking no new ones
    STOPPED = "stopped"  # exited cleanly
    OFFLINE = "offline"  # missed its beats: gone without a word (killed, host lost, partitioned)

    def __str__(self) -> str:
        return self.value


#: The states in which a worker counts as present while its record has not expired.
PRESENT = frozenset({WorkerState.ONLINE, WorkerState.STOPPING})


class WorkerRecord(BaseModel):
    """One worker process in the registry (all times on the store's clock)."""

    model_config = ConfigDict(extra="ignore")

    node_id: str = Field(min_length=1, max_length=255)
    host: str = Field(max_length=255)
    pid: int
    labels: Labels = Field(default_factory=dict)
    #: The task types it runs, and the queue groups (work queues) it consumes.
    task_types: list[str] = Field(default_factory=list)
    queue_groups: list[str] = Field(default_factory=list)
    #: Attempts it runs at once at most, and how many it was running at its last beat.
    concurrency: int = Field(ge=0)
    running: int = Field(default=0, ge=0)
    version: str = Field(max_length=64)
    started_at: datetime
    last_seen_at: datetime = Field(default_factory=utcnow)
    heartbeat_seconds: float = Field(gt=0)
    #: ``last_seen_at`` plus ``MISSED_BEATS`` intervals: present until then.
    expires_at: datetime
    state: WorkerState = WorkerState.ONLINE
    #: When ``state`` last changed.
    state_changed_at: datetime = Field(default_factory=utcnow)

    def online_at(self, now: datetime) -> bool:
        """Whether the worker counts as present at ``now`` (the store's clock)."""
        return self.state in PRESENT and self.expires_at > now

    @property
    def load(self) -> float:
        """Running attempts over concurrency (0 when it has no slots)."""
        return self.running / self.concurrency if self.concurrency else 0.0
