"""Data that crosses process boundaries: statuses, the task document, the AMQP message."""

from taskplatform.models.dead_letter import AuditEntry, DeadLetter, DeadLetterStatus, DeathRecord
from taskplatform.models.message import TaskMessage
from taskplatform.models.status import RUNNABLE, TERMINAL, TRANSITIONS, TaskStatus, can_transition, sources_of
from taskplatform.models.task import (
    MAX_PRIORITY,
    BackgroundTask,
    ErrorInfo,
    OutboxState,
    OutboxStatus,
    SubTaskStatusSummary,
    new_task_id,
    utcnow,
)

__all__ = [
    "MAX_PRIORITY",
    "RUNNABLE",
    "TERMINAL",
    "TRANSITIONS",
    "AuditEntry",
    "BackgroundTask",
    "DeadLetter",
    "DeadLetterStatus",
    "DeathRecord",
    "ErrorInfo",
    "OutboxState",
    "OutboxStatus",
    "SubTaskStatusSummary",
    "TaskMessage",
    "TaskStatus",
    "can_transition",
    "new_task_id",
    "sources_of",
    "utcnow",
]
