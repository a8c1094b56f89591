"""Task statuses and the one table that says which moves between them are legal."""

from __future__ import annotations

from enum import Enum


class TaskStatus(str, Enum):
    """Where a task is in its life."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    RETRYING = "RETRYING"
    DEAD_LETTER = "DEAD_LETTER"
    COMPLETED_WITH_ERRORS = "COMPLETED_WITH_ERRORS"

    def __str__(self) -> str:
        return self.value


S = TaskStatus

#: Legal moves. A store write names the target status and filters on the statuses
#: that may precede it (``sources_of``), so a late or duplicated message can never
#: move a task backwards.
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED, S.DEAD_LETTER}),
    # RUNNING -> RUNNING is a takeover after the previous owner's lease expired;
    # RUNNING -> QUEUED is a requeue (graceful shutdown, reaper).
    S.RUNNING: frozenset(
        {
            S.RUNNING,
            S.COMPLETED,
            S.COMPLETED_WITH_ERRORS,
            S.RETRYING,
            S.FAILED,
            S.DEAD_LETTER,
            S.CANCELLED,
            S.QUEUED,
        }
    ),
    S.RETRYING: frozenset({S.RUNNING, S.CANCELLED, S.FAILED, S.DEAD_LETTER}),
    S.FAILED: frozenset({S.DEAD_LETTER, S.QUEUED}),
    S.DEAD_LETTER: frozenset({S.QUEUED}),
    S.COMPLETED: frozenset(),
    S.COMPLETED_WITH_ERRORS: frozenset(),
    S.CANCELLED: frozenset(),
}

#: Statuses a worker will never run again without an operator's replay.
TERMINAL: frozenset[TaskStatus] = frozenset(
    {S.COMPLETED, S.COMPLETED_WITH_ERRORS, S.CANCELLED, S.FAILED, S.DEAD_LETTER}
)

#: Statuses a delivered message may start from.
RUNNABLE: frozenset[TaskStatus] = frozenset({S.QUEUED, S.RETRYING})


def can_transition(source: TaskStatus, target: TaskStatus) -> bool:
    """Whether ``source -> target`` is a legal move."""
    return target in TRANSITIONS[source]


def sources_of(target: TaskStatus) -> frozenset[TaskStatus]:
    """Every status from which ``target`` may be reached."""
    return frozenset(source for source, targets in TRANSITIONS.items() if target in targets)
