"""What each refusal answers over gRPC: a status code, the message HTTP gives, and for invalid
input a ``google.rpc.BadRequest`` naming the fields (in ``grpc-status-details-bin``).

| condition | HTTP | gRPC |
|---|---|---|
| invalid request, parameters, cursor, unknown type, unreachable target | 422 | INVALID_ARGUMENT |
| bulk items at fault (fields ``tasks[INDEX].FIELD``) | 422 | INVALID_ARGUMENT |
| bulk items whose keys were used with other tasks, and nothing else | 422 | ALREADY_EXISTS |
| no token, bad token | 401 | UNAUTHENTICATED |
| role too low, another user | 403 | PERMISSION_DENIED |
| missing task, another user's task | 404 | NOT_FOUND |
| task finished (cancel) | 409 | FAILED_PRECONDITION |
| idempotency key used with another request | 422 ``idempotency_key_reused`` | ALREADY_EXISTS |
| submit rate limit | 429 | RESOURCE_EXHAUSTED (with ``google.rpc.RetryInfo``) |
| a caller's watches at ``GRPC_MAX_WATCHES_PER_CALLER`` | (none) | RESOURCE_EXHAUSTED |
| store unreachable (a watch: the broker too) | 503 | UNAVAILABLE |
| anything else (a bug) | 500 | INTERNAL, logged |
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from pydantic import ValidationError

from taskplatform.api.auth import rejection
from taskplatform.auth import AuthenticationError
from taskplatform.commands import CommandForbidden, TaskConflict, TaskNotFound
from taskplatform.commands_bulk import BulkForbidden
from taskplatform.errors import (
    TRANSIENT_BROKER_ERRORS,
    BrokerError,
    InvalidInputError,
    StoreError,
    UnknownTaskTypeError,
    UnreachableTargetError,
)
from taskplatform.grpc_api.watch import WatchesLimited
from taskplatform.ratelimit.submissions import SubmissionsLimited, SubmissionTooHeavy
from taskplatform.store.base import InvalidCursorError
from taskplatform.submission import BulkProblem, BulkSubmissionRefused, IdempotencyKeyReusedError

log = logging.getLogger(__name__)

#: What a store outage answers, as HTTP's 503 says it.
STORE_DOWN = "the task store is unavailable; retry later"
BROKER_DOWN = "the message broker is unavailable; retry later"


@dataclass
class Refusal:
    """A status to end a call with: code, message and the field violations, if any."""

    code: grpc.StatusCode
    message: str
    violations: list[tuple[str, str]] = field(default_factory=list)
    retry_seconds: int | None = None

    def status(self) -> grpc.Status:
        """As ``context.abort_with_status`` takes it (details in ``grpc-status-details-bin``)."""
        details: list[any_pb2.Any] = []
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in self.violations
                ]
            )
            details.append(_packed(bad))
        if self.retry_seconds is not None:
            retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=self.retry_seconds))
            details.append(_packed(retry))
        proto = status_pb2.Status(code=_CODES[self.code], message=self.message, details=details)
        return rpc_status.to_status(proto)


def _packed(message: error_details_pb2.BadRequest | error_details_pb2.RetryInfo) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


_CODES = {code: getattr(code_pb2, code.name) for code in grpc.StatusCode}


def _item_field(problem: BulkProblem) -> str:
    """``tasks[INDEX]``, and the field within the item where one is at fault."""
    loc = problem.details.get("loc")
    return f"tasks[{problem.index}]" + (f".{_dotted(loc)}" if loc else "")


def _dotted(loc: Iterable[str | int]) -> str:
    return ".".join(str(p) for p in loc)


def invalid(exc: ValidationError, *, prefix: tuple[str, ...] = (), what: str = "request") -> Refusal:
    """A pydantic refusal: the fields and what is wrong with each (the HTTP 422's details)."""
    violations = [(_dotted((*prefix, *err.get("loc", ()))), err["msg"]) for err in exc.errors()]
    where = "; ".join(f"{f}: {m}" for f, m in violations[:5])
    return Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"invalid {what}: {where}", violations)


def refusal_of(exc: BaseException) -> Refusal | None:  # noqa: C901  (one answer per condition)
    """The answer to a known condition; None for anything else (a bug: INTERNAL)."""
    if isinstance(exc, ValidationError):  # the parameters, against the task type
        return invalid(exc, prefix=("parameters",), what="parameters")
    if isinstance(exc, UnknownTaskTypeError):
        return Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(exc), [("task_type", str(exc))])
    if isinstance(exc, UnreachableTargetError):
        message = f"the task cannot run where it is aimed: {exc}"
        return Refusal(grpc.StatusCode.INVALID_ARGUMENT, message, [("target", m) for _, m in exc.problems])
    if isinstance(exc, InvalidInputError):
        where = [(_dotted(exc.location), str(exc))]
        return Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"invalid input: {exc}", where)
    if isinstance(exc, InvalidCursorError):
        return Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(exc), [("cursor", str(exc))])
    if isinstance(exc, SubmissionTooHeavy):
        return Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, AuthenticationError):
        return Refusal(grpc.StatusCode.UNAUTHENTICATED, rejection(exc))
    if isinstance(exc, BulkForbidden):  # before CommandForbidden: it names the items
        where = [(f"tasks[{f.index}].{f.field}", f.why) for f in exc.items]
        return Refusal(grpc.StatusCode.PERMISSION_DENIED, str(exc), where)
    if isinstance(exc, BulkSubmissionRefused):
        codes = {p.code for p in exc.problems}
        code = (
            grpc.StatusCode.ALREADY_EXISTS
            if codes == {"idempotency_key_reused"}
            else grpc.StatusCode.INVALID_ARGUMENT
        )
        return Refusal(code, str(exc), [(_item_field(p), p.message) for p in exc.problems])
    if isinstance(exc, CommandForbidden):
        return Refusal(grpc.StatusCode.PERMISSION_DENIED, str(exc))
    if isinstance(exc, TaskNotFound):
        return Refusal(grpc.StatusCode.NOT_FOUND, str(exc))
    if isinstance(exc, TaskConflict):
        return Refusal(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, IdempotencyKeyReusedError):
        return Refusal(grpc.StatusCode.ALREADY_EXISTS, str(exc), [("idempotency_key", str(exc))])
    if isinstance(exc, WatchesLimited):
        return Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    if isinstance(exc, SubmissionsLimited):
        return Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), retry_seconds=exc.seconds)
    if isinstance(exc, StoreError):
        log.error("store error: %s", exc)
        return Refusal(grpc.StatusCode.UNAVAILABLE, STORE_DOWN)
    if isinstance(exc, (BrokerError, *TRANSIENT_BROKER_ERRORS)):  # a watch needs the broker
        log.error("broker error: %s", exc)
        return Refusal(grpc.StatusCode.UNAVAILABLE, BROKER_DOWN)
    return None
