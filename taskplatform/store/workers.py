"""The worker registry's store types: the list filter, a page, the cursor; shared by every backend.

The port is ``WorkerRegistry`` (``record_ports``). What each operation means, for every backend:

- ``beat_worker(record)`` writes the record whole, by ``node_id`` (insert or replace), in one
  atomic operation, and returns the state the stored record had just before (None: it is new).
  A worker that finds ``offline`` or ``stopped`` there has come back. Nothing of the old record
  is kept, ``state_changed_at`` included: the writer sets it.
- ``sweep_offline_workers(now=)`` moves every record still present (``PRESENT`` states) whose
  ``expires_at`` is at or before ``now`` to ``offline`` (``state_changed_at = now``) with one
  conditional update per record, and returns the records it moved, as moved: of processes
  sweeping at once, each transition is returned to exactly one, and a beat that lands first wins.
- ``prune_workers(before=)`` deletes records ``stopped`` or ``offline`` last seen before ``before``.
- ``list_workers`` pages by ``node_id`` ascending; ``online`` is judged on the store's clock;
  labels match exactly (``role=db_1`` is not a pattern), in the store's query.

``sweep_offline_workers`` and ``prune_workers`` take at most ``limit`` records (at least 1).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from taskplatform.models.worker import PRESENT, Labels, WorkerRecord, WorkerState
from taskplatform.store.types import InvalidCursorError

__all__ = [
    "GONE_STATES",
    "PRESENT_STATES",
    "WorkerFilter",
    "WorkerPage",
    "check_batch",
    "decode_worker_cursor",
    "encode_worker_cursor",
    "label_pairs",
]

#: The present states as stored (their values), for the stores' queries.
PRESENT_STATES = sorted(state.value for state in PRESENT)
#: The states ``prune_workers`` deletes (as stored): the worker said it stopped, or went silent.
GONE_STATES = sorted(state.value for state in (WorkerState.STOPPED, WorkerState.OFFLINE))


class WorkerFilter(BaseModel):
    """Worker list filters; every given one must match."""

    model_config = ConfigDict(frozen=True)

    #: True: present (``online``/``stopping``, not expired) on the store's clock; False: the rest.
    online: bool | None = None
    state: WorkerState | None = None
    host: str | None = None
    #: Every label given must be on the worker with this value.
    labels: Labels = Field(default_factory=dict)


class WorkerPage(BaseModel):
    """One page of workers by node id; ``next_cursor`` is None on the last page."""

    items: list[WorkerRecord] = Field(default_factory=list)
    next_cursor: str | None = None


def encode_worker_cursor(node_id: str) -> str:
    """An opaque cursor pointing just after ``node_id``."""
    return base64.urlsafe_b64encode(b"w|" + node_id.encode()).decode().rstrip("=")


def decode_worker_cursor(cursor: str) -> str:
    """Inverse of :func:`encode_worker_cursor`; InvalidCursorError on anything else."""
    try:
        raw = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidCursorError(f"invalid cursor {cursor!r}") from exc
    if not raw.startswith("w|") or len(raw) == 2 or "\x00" in raw:
        raise InvalidCursorError(f"invalid cursor {cursor!r}")
    return raw[2:]


def label_pairs(labels: Mapping[str, str]) -> list[str]:
    """``labels`` as ``key=value`` texts sorted by key: what the stores match labels on. Neither a
    key nor a value holds ``=`` or ``|`` (``LABEL_*_PATTERN``), so each text names one label."""
    return [f"{key}={labels[key]}" for key in sorted(labels)]


def check_batch(limit: int) -> int:
    """``limit`` if it is at least 1 (a sweep's or a prune's batch); else ValueError."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    return limit
