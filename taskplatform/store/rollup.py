"""The parent/child roll-up, as pure data: a per-child ledger and the counts it implies.

A parent counts each child once, in the bucket of the child's latest known status. The
ledger remembers, per child, the bucket it is counted in and the child document version
that put it there, so a roll-up that arrives twice, or after a newer one, changes nothing.
Backends keep the ledger where they can update it atomically with the parent's counts
(a table in the same transaction on SQL, a sub-document of the parent on MongoDB).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from taskplatform.models import SubTaskStatusSummary, TaskStatus

#: One roll-up: (child id, the child's status, the child's document version).
RollupItem = tuple[str, TaskStatus, int]


@dataclass(frozen=True)
class LedgerEntry:
    """Where one child is counted, and the child version that put it there."""

    bucket: str
    version: int


@dataclass(frozen=True)
class RollupDelta:
    """What one roll-up changes: counter increments and the child's new ledger entry."""

    increments: dict[str, int]
    entry: LedgerEntry


@dataclass
class RollupOutcome:
    """The result of folding roll-ups into a parent's summary and ledger."""

    summary: SubTaskStatusSummary | None
    #: Ledger entries to write, by child id (new or moved to a newer version).
    written: dict[str, LedgerEntry] = field(default_factory=dict)
    #: Whether any counter changed (the parent's version is bumped only then).
    counts_changed: bool = False


def check_child_id(child_id: str) -> str:
    """Child ids key the ledger (on MongoDB, a field name): no dots or dollars."""
    if not child_id or "." in child_id or "$" in child_id:
        raise ValueError(f"invalid child task id {child_id!r} for a roll-up: it must not contain '.' or '$'")
    return child_id


def rollup_delta(entry: LedgerEntry | None, status: TaskStatus, version: int) -> RollupDelta | None:
    """What rolling up ``status`` at ``version`` changes, given the child's ledger ``entry``.

    None when the ledger already holds this version or a newer one (duplicate or stale).
    """
    bucket = SubTaskStatusSummary.bucket(status)
    new_entry = LedgerEntry(bucket, version)
    if entry is None:
        return RollupDelta({"total": 1, bucket: 1}, new_entry)
    if entry.version >= version:
        return None
    if entry.bucket == bucket:
        return RollupDelta({}, new_entry)
    return RollupDelta({entry.bucket: -1, bucket: 1}, new_entry)


def fold(
    summary: SubTaskStatusSummary | None,
    ledger: Mapping[str, LedgerEntry],
    items: Iterable[RollupItem],
) -> RollupOutcome:
    """Apply ``items`` in order to a parent's ``summary`` and (the relevant part of) its ``ledger``."""
    counts = summary.model_dump() if summary is not None else SubTaskStatusSummary().model_dump()
    current = dict(ledger)
    outcome = RollupOutcome(summary=summary)
    for child_id, status, version in items:
        delta = rollup_delta(current.get(child_id), status, version)
        if delta is None:
            continue
        for name, n in delta.increments.items():
            counts[name] += n
        outcome.counts_changed |= bool(delta.increments)
        current[child_id] = outcome.written[child_id] = delta.entry
    if outcome.counts_changed:
        outcome.summary = SubTaskStatusSummary.model_validate(counts)
    return outcome
