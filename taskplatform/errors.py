"""The platform's exception tree.

``TaskPlatformError`` is the root. *Faults* say something in the platform or its
infrastructure went wrong; *control signals* are raised by executables to steer
settlement.
"""

from __future__ import annotations


class TaskPlatformError(Exception):
    """Root of every error the platform raises on purpose."""


# ---------------------------------------------------------------- faults
class Fault(TaskPlatformError):
    """Something outside the executable's control failed."""


class ConfigError(Fault):
    """Configuration is invalid; the message says which setting and why."""


class BrokerError(Fault):
    """RabbitMQ could not be reached or refused an operation."""


class UnroutableError(BrokerError):
    """A mandatory publish came back unroutable: no queue is bound for the routing key."""


class StoreError(Fault):
    """The task store failed."""


class TopologyError(Fault):
    """The broker's topology differs from the declared one."""


class UnknownTaskTypeError(TaskPlatformError):
    """No executable is registered for a task type."""

    def __init__(self, task_type: str, registered: list[str]) -> None:
        self.task_type = task_type
        self.registered = sorted(registered)
        names = ", ".join(self.registered) or "(none)"
        super().__init__(f"unknown task type {task_type!r}; registered: {names}")


class InvalidInputError(TaskPlatformError):
    """Input that validated against its model but cannot be stored as given."""

    def __init__(self, location: tuple[str | int, ...], message: str) -> None:
        self.location = location
        where = ".".join(map(str, location))
        super().__init__(f"{where}: {message}")


class StoreRefused(StoreError):
    """The store answers, but keeps refusing a write: trying it again will not help."""


class DuplicateTaskError(StoreError):
    """A task with this id (or idempotency key) already exists."""


class DuplicateEntryError(StoreError):
    """A history record (an audit entry) with this id already exists."""


class MessageDecodeError(TaskPlatformError):
    """An AMQP message could not be decoded into a task message."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


# ------------------------------------------------------- control signals
class ControlSignal(TaskPlatformError):
    """Raised by an executable to steer how its attempt is settled."""


class Retry(ControlSignal):
    """Ask for another attempt, optionally after ``delay`` seconds."""

    def __init__(self, message: str = "retry requested", *, delay: float | None = None) -> None:
        self.delay = delay
        super().__init__(message)


class PermanentFailure(ControlSignal):
    """Fail the task now, without retrying; it goes to the dead-letter queue."""


class Cancelled(ControlSignal):
    """The task observed a cancellation request and stopped."""


# ------------------------------------------- transient infrastructure errors
def _transient_broker_errors() -> tuple[type[BaseException], ...]:
    from aiormq.exceptions import AMQPConnectionError, ChannelClosed, ChannelInvalidStateError

    return (AMQPConnectionError, ChannelInvalidStateError, ChannelClosed, ConnectionError, TimeoutError)


#: Broker faults worth retrying: the connection or channel went away, or a confirm timed out.
TRANSIENT_BROKER_ERRORS: tuple[type[BaseException], ...] = _transient_broker_errors()
#: Every infrastructure fault after which the same work may succeed if tried again.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_BROKER_ERRORS, StoreError, BrokerError)


class UnreachableTargetError(TaskPlatformError):
    """A task is aimed where it cannot run: a node that never registered or does not serve its
    type, labels no worker serving it carries (the API answers 422 ``target_unreachable``).
    ``positions``: which of the tasks submitted together are at fault, with why."""

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(message for _, message in problems[:5]))


class NodeIdInUse(ConfigError):
    """Another live process beats the registry record of this worker's node id: two workers with
    one ``NODE_ID`` would take each other's claims for their own."""
