"""Why a task or message died: the values a dead letter's ``reason`` takes."""

from __future__ import annotations

from enum import Enum


class DeadLetterReason(str, Enum):
    """The reason a dead letter records (``DeadLetter.reason``, the API's ``reason`` filter).

    The platform's own reasons come first: a task that failed for good, or a message that
    could not run. RabbitMQ's reasons appear only for a message the broker dead-lettered
    when the platform had recorded none (a rejected original, the quorum queue's delivery
    limit). ``expired`` and ``maxlen`` never reach the DLQ: the retry queues' TTL routes back
    to the work exchange and the work queues refuse publishes when full.
    """

    # a task that failed for good (taskplatform/worker/settlement.py: decide; the reaper)
    NON_RETRYABLE = "non-retryable"
    PERMANENT_FAILURE = "permanent-failure"
    ATTEMPTS_EXHAUSTED = "attempts-exhausted"
    LEASE_EXPIRED = "lease-expired"
    # an aimed task whose worker node stayed offline past its target_timeout (taskplatform/targets.py)
    TARGET_OFFLINE = "target-offline"
    # a message that cannot run (the worker's consumer and claims; the message codec)
    UNKNOWN_TASK_TYPE = "unknown-task-type"
    UNKNOWN_TASK = "unknown-task"
    TASK_MISMATCH = "task-mismatch"
    MISSING_HEADER = "missing-header"
    BAD_JSON = "bad-json"
    INVALID_BODY = "invalid-body"
    HEADER_MISMATCH = "header-mismatch"
    # RabbitMQ's, when the platform recorded no reason of its own
    REJECTED = "rejected"
    DELIVERY_LIMIT = "delivery_limit"

    def __str__(self) -> str:
        return self.value


#: The reasons RabbitMQ gives (``x-death``), as opposed to the platform's own.
BROKER_REASONS = frozenset({DeadLetterReason.REJECTED, DeadLetterReason.DELIVERY_LIMIT})
