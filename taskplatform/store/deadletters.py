"""Dead-letter records and the operator audit log: the store's types and shared operations.

Every change to a record is decided here, once, as a pure function of the record read
(``merge_dead_letter`` and the ``mark_*`` rules), and written by the backend as a
compare-and-set on the record's ``version``. A lost race reads again and decides again, so
concurrent upserts of one record are exact (each is counted once in ``times_seen``).
Backends implement the primitives of ``DeadLetterOperations``: an insert that reports a
taken id, a read, the compare-and-set, listing, counting and the audit log.

Every record is made storable before it is written (``storable``): the body is kept as bytes
by each backend (binary-safe), and in every other string NUL and lone surrogates are written
as ``\\uXXXX`` escapes (PostgreSQL refuses NUL in text and JSON; no backend encodes a lone
surrogate), the indexed text fields cut to ``MAX_FIELD_LENGTH`` characters, integers beyond
64 bits and non-finite numbers written as text.
"""

from __future__ import annotations

import base64
import builtins
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from taskplatform.errors import StoreError
from taskplatform.models import AuditEntry, DeadLetter, DeadLetterStatus, utcnow
from taskplatform.models.dead_letter import AuditAction
from taskplatform.store.ports import AuditLog, DeadLetters

__all__ = [
    "UNKNOWN_TASK_TYPE",
    "AuditPage",
    "DeadLetterCounts",
    "DeadLetterFilter",
    "DeadLetterOperations",
    "DeadLetterPage",
    "filter_time",
    "UpsertOutcome",
    "merge_dead_letter",
]

#: The ``by_task_type`` key of records that name no task type.
UNKNOWN_TASK_TYPE = "unknown"
#: Lost compare-and-set races an operation retries before giving up; each loss means
#: another writer changed the record meanwhile.
_CAS_ATTEMPTS = 1000
#: The fields a record that dies again (a newer generation) takes from the new death.
REOPEN_FIELDS = (
    "task_type",
    "user_id",
    "reason",
    "error_type",
    "error_info",
    "attempt",
    "generation",
    "exchange",
    "routing_key",
    "body",
    "body_encoding",
    "body_size",
    "body_sha256",
    "body_truncated",
    "properties",
    "headers",
    "x_death",
    "last_seen_at",
)
#: The DeadLetterFilter fields matched by equality with the record's field of the same name.
EQUALITY_FIELDS = ("task_type", "reason", "user_id", "error_type", "task_id")
#: Top-level record times (kept as real datetimes where a backend can index them).
RECORD_TIMES = ("first_seen_at", "last_seen_at", "replayed_at", "discarded_at", "updated_at")
#: Longest text kept in the indexed fields (SQL columns of 255; index entries stay small).
MAX_FIELD_LENGTH = 200
#: The record's text fields that are columns and indexed; longer values are cut.
INDEXED_TEXT = ("task_id", "task_type", "user_id", "reason", "error_type")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class DeadLetterFilter(BaseModel):
    """Dead-letter list/count filters; every given field must match.

    ``since`` (inclusive) and ``until`` (exclusive) bound ``last_seen_at``.
    """

    model_config = ConfigDict(frozen=True)

    status: DeadLetterStatus | None = None
    task_type: str | None = None
    reason: str | None = None
    user_id: str | None = None
    error_type: str | None = None
    task_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @field_validator("since", "until")
    @classmethod
    def _aware_utc(cls, value: datetime | None) -> datetime | None:
        return filter_time(value)


def filter_time(value: datetime | None) -> datetime | None:
    """A ``since``/``until`` bound in UTC. ValueError when it is naive or has no UTC time
    (``0001-01-01T00:00:00+14:00`` is before the first UTC time a datetime holds)."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("a time needs its UTC offset, as in 2026-01-01T00:00:00Z")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("time out of range: in UTC it falls outside 0001-01-01 to 9999-12-31") from None


class DeadLetterPage(BaseModel):
    """One page of dead letters, most recently seen first; ``next_cursor`` is None on the last."""

    items: list[DeadLetter] = Field(default_factory=list)
    next_cursor: str | None = None


class DeadLetterCounts(BaseModel):
    """How many records match, in all and by task type (``unknown`` when none) and reason."""

    total: int = 0
    by_task_type: dict[str, int] = Field(default_factory=dict)
    by_reason: dict[str, int] = Field(default_factory=dict)


class AuditFilter(BaseModel):
    """Audit log filters; every given one must match. ``since`` inclusive, ``until`` exclusive."""

    model_config = ConfigDict(frozen=True)

    actor: str | None = None
    action: AuditAction | None = None
    #: Entries naming this task: its submission, changes, cancel, deletion, and the replay or
    #: discard of its dead letter (a bulk replay names the dead letters only; entries made
    #: before the log covered tasks name none).
    task_id: str | None = None
    dead_letter_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, entry: AuditEntry) -> bool:
        """The filter, in Python (the memory backend's, and a check of the others')."""
        return (
            (self.actor is None or entry.actor == self.actor)
            and (self.action is None or entry.action == self.action)
            and (self.task_id is None or self.task_id in entry.task_ids)
            and (self.dead_letter_id is None or self.dead_letter_id in entry.dead_letter_ids)
            and (self.since is None or entry.at >= self.since)
            and (self.until is None or entry.at < self.until)
        )


def audit_filter(filters: AuditFilter | None, dead_letter_id: str | None) -> AuditFilter:
    """``filters`` with ``dead_letter_id`` (the older keyword) folded in."""
    filters = filters or AuditFilter()
    if dead_letter_id is not None:
        filters = filters.model_copy(update={"dead_letter_id": dead_letter_id})
    return filters


class AuditPage(BaseModel):
    """One page of the audit log, newest first; ``next_cursor`` is None on the last page."""

    items: list[AuditEntry] = Field(default_factory=list)
    next_cursor: str | None = None


class UpsertOutcome(str, Enum):
    """What ``upsert_dead_letter`` did with the record it was given."""

    CREATED = "created"  # no record had this id
    DUPLICATE = "duplicate"  # the same death seen again: counted in times_seen
    REOPENED = "reopened"  # the task died again after a replay: a new death, pending again
    STALE = "stale"  # a death of an earlier generation arrived late: counted in times_seen only

    def __str__(self) -> str:
        return self.value


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the store; use timezone-aware UTC")
    return value.astimezone(UTC)


def normalized(record: DeadLetter) -> DeadLetter:
    """``record`` with every time in UTC (naive times are refused)."""
    changes: dict[str, Any] = {name: _utc(getattr(record, name)) for name in RECORD_TIMES}
    if record.error_info is not None:
        occurred = _utc(record.error_info.occurred_at)
        changes["error_info"] = record.error_info.model_copy(update={"occurred_at": occurred})
    changes["x_death"] = [d.model_copy(update={"time": _utc(d.time)}) for d in record.x_death]
    return record.model_copy(update=changes)


def storable_text(text: str) -> str:
    """``text`` with NUL and lone surrogates written as ``\\uXXXX`` (six characters each)."""
    return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _storable_value(value: Any) -> Any:
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not _INT64_MIN <= value <= _INT64_MAX:
        return str(value)  # beyond what JSON encoders and BSON take
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # not JSON
    if isinstance(value, dict):
        return {storable_text(str(k)): _storable_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable_value(v) for v in value]
    return value


def _cut(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_FIELD_LENGTH:
        return text
    return text[: MAX_FIELD_LENGTH - 1] + "…"


def storable(record: DeadLetter) -> DeadLetter:
    """``record`` as every backend can write it: NUL and lone surrogates escaped in every
    string but the body (kept as bytes; a text body that is no valid UTF-8 is turned to
    base64), the indexed text fields cut to MAX_FIELD_LENGTH. A clean record is returned as is."""
    data = record.model_dump(mode="python", exclude={"body", "body_encoding"})
    cleaned = _storable_value(data)
    for name in INDEXED_TEXT:
        cleaned[name] = _cut(cleaned[name])
    body, encoding = record.body, record.body_encoding
    if encoding == "utf-8" and _UNSTORABLE.search(body) and not _encodes(body):
        body, encoding = base64.b64encode(body.encode("utf-8", "surrogatepass")).decode(), "base64"
    if cleaned == data and encoding == record.body_encoding:
        return record
    return DeadLetter.model_validate({**cleaned, "body": body, "body_encoding": encoding})


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def storable_entry(entry: AuditEntry) -> AuditEntry:
    """``entry`` with NUL and lone surrogates escaped in its strings (as ``storable``)."""
    data = entry.model_dump(mode="python")
    cleaned = _storable_value(data)
    return entry if cleaned == data else AuditEntry.model_validate(cleaned)


def normalized_entry(entry: AuditEntry) -> AuditEntry:
    """``entry`` with its time in UTC (naive times are refused)."""
    return entry.model_copy(update={"at": _utc(entry.at)})


def merge_dead_letter(
    existing: DeadLetter, new: DeadLetter, *, now: datetime
) -> tuple[DeadLetter, UpsertOutcome]:
    """The record after ``new`` arrives for ``existing`` (same id), and what that was.

    A newer generation reopens the record with the new death's content; the same
    generation is a duplicate (``last_seen_at`` only moves forward); an older one is stale.
    Every outcome counts ``times_seen`` and bumps ``version`` and ``updated_at``.
    """
    changes: dict[str, Any] = {
        "times_seen": existing.times_seen + 1,
        "version": existing.version + 1,
        "updated_at": now,
    }
    if new.generation > existing.generation:
        outcome = UpsertOutcome.REOPENED
        changes.update({name: getattr(new, name) for name in REOPEN_FIELDS})
        changes.update(status=DeadLetterStatus.PENDING, deaths=existing.deaths + 1)
    elif new.generation == existing.generation:
        outcome = UpsertOutcome.DUPLICATE
        changes["last_seen_at"] = max(existing.last_seen_at, new.last_seen_at)
    else:
        outcome = UpsertOutcome.STALE
    return existing.model_copy(update=changes), outcome


def _bumped(record: DeadLetter, **changes: Any) -> DeadLetter:
    return record.model_copy(update={**changes, "version": record.version + 1, "updated_at": utcnow()})


def counts_of(
    by_type: builtins.list[tuple[str | None, int]], by_reason: builtins.list[tuple[str, int]]
) -> DeadLetterCounts:
    """Counts from grouped rows (a record with no task type counts as ``unknown``)."""
    types: dict[str, int] = {}
    for task_type, n in by_type:
        key = task_type if task_type is not None else UNKNOWN_TASK_TYPE
        types[key] = types.get(key, 0) + int(n)
    reasons: dict[str, int] = {}
    for reason, n in by_reason:
        reasons[reason] = reasons.get(reason, 0) + int(n)
    return DeadLetterCounts(total=sum(types.values()), by_task_type=types, by_reason=reasons)


class DeadLetterOperations(DeadLetters, AuditLog, ABC):
    """Dead-letter records and the audit log, shared by every backend over its primitives.

    A backend implements the ports' reads and the audit log, and the two primitives below.
    """

    @abstractmethod
    async def _insert_dead_letter(self, record: DeadLetter) -> bool:
        """Insert ``record``; False (nothing written) when its id is taken."""

    @abstractmethod
    async def _swap_dead_letter(self, record: DeadLetter, *, expected_version: int) -> DeadLetter | None:
        """Replace the stored record of ``record.id`` with ``record`` if its version is still
        ``expected_version``; returns the record as stored, or None when it was not."""

    # ------------------------------------------------------------ shared operations
    async def upsert_dead_letter(self, record: DeadLetter) -> tuple[DeadLetter, UpsertOutcome]:
        """Store a death: a new record (CREATED), or the existing one merged with it
        (``merge_dead_letter``: DUPLICATE, REOPENED or STALE). Returns the record after.

        Atomic and exact under concurrency: every call counts once. The record is made
        ``storable`` first, so no string in it can make the write fail.
        """
        record = storable(normalized(record))
        if await self._insert_dead_letter(record):
            return record, UpsertOutcome.CREATED
        for _ in range(_CAS_ATTEMPTS):
            existing = await self.get_dead_letter(record.id)
            if existing is None:  # gone since the insert found it: insert again
                if await self._insert_dead_letter(record):
                    return record, UpsertOutcome.CREATED
                continue
            merged, outcome = merge_dead_letter(existing, record, now=utcnow())
            stored = await self._swap_dead_letter(merged, expected_version=existing.version)
            if stored is not None:
                return stored, outcome
        raise StoreError(f"upsert of dead letter {record.id} kept losing races; try again")

    async def _modify_dead_letter(
        self, dead_letter_id: str, change: Callable[[DeadLetter], DeadLetter | None]
    ) -> DeadLetter | None:
        """Apply ``change`` (None: its guard does not hold) to the record by compare-and-set."""
        for _ in range(_CAS_ATTEMPTS):
            existing = await self.get_dead_letter(dead_letter_id)
            if existing is None:
                return None
            changed = change(existing)
            if changed is None:
                return None
            stored = await self._swap_dead_letter(normalized(changed), expected_version=existing.version)
            if stored is not None:
                return stored
        raise StoreError(f"update of dead letter {dead_letter_id} kept losing races; try again")

    async def mark_dead_letter_replayed(
        self, dead_letter_id: str, *, generation: int, at: datetime
    ) -> DeadLetter | None:
        """PENDING -> REPLAYED (``replayed_at``, ``replay_count`` + 1), only while the record
        holds the death of ``generation``. None when there is no such pending record."""

        def replayed(record: DeadLetter) -> DeadLetter | None:
            if record.status is not DeadLetterStatus.PENDING or record.generation != generation:
                return None
            return _bumped(
                record,
                status=DeadLetterStatus.REPLAYED,
                replayed_at=at,
                replay_count=record.replay_count + 1,
            )

        return await self._modify_dead_letter(dead_letter_id, replayed)

    async def mark_dead_letter_discarded(self, dead_letter_id: str, *, at: datetime) -> DeadLetter | None:
        """PENDING -> DISCARDED (``discarded_at``). None when there is no such pending record."""

        def discarded(record: DeadLetter) -> DeadLetter | None:
            if record.status is not DeadLetterStatus.PENDING:
                return None
            return _bumped(record, status=DeadLetterStatus.DISCARDED, discarded_at=at)

        return await self._modify_dead_letter(dead_letter_id, discarded)
