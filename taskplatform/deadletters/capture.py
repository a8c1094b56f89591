"""Turning a message from the dead-letter queue into a DeadLetter record (and a task that died
with no message, reaped from a vanished worker, into one).

Everything the broker handed over is kept: the body as bytes (up to ``MAX_BODY_BYTES``, with
its full size and SHA-256), properties, headers and ``x-death``, made JSON-safe. A message that
decodes with the platform codec is the task's own and shares the task's record (id = task id);
any other is a message-level dead letter with a record of its own (id = a hash of its content)
that names the task only as a link, so it can never stand in for the task's record.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, Protocol

from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from taskplatform.errors import MessageDecodeError, StoreError
from taskplatform.messaging.codec import decode
from taskplatform.models import BackgroundTask, DeadLetter, DeathRecord, ErrorInfo, TaskMessage, utcnow
from taskplatform.models.dead_letter import MAX_BODY_BYTES, BodyEncoding, body_as_text
from taskplatform.models.message import (
    HEADER_DEAD_AT,
    HEADER_DEAD_DETAIL,
    HEADER_DEAD_REASON,
    HEADER_RETRY_COUNT,
    HEADER_TASK_ID,
    HEADER_TASK_TYPE,
)
from taskplatform.store.deadletters import storable_text

log = logging.getLogger(__name__)

#: Longest id a record may take from a message (longer ones are hashed).
MAX_ID_LENGTH = 200
#: Longest error detail a record takes from a message's ``x-dead-detail`` header.
MAX_DETAIL_LENGTH = 4000
#: Headers the broker or the platform adds or changes as a message is redelivered or dies
#: again; a record id made from a message's content leaves them out, so the same message finds
#: the same record.
VOLATILE_HEADERS = frozenset(
    {
        HEADER_DEAD_AT,  # the worker stamps each death with its own time
        HEADER_DEAD_DETAIL,
        "x-death",
        "x-delivery-count",  # quorum queues count redeliveries in it
        "x-first-death-reason",
        "x-first-death-queue",
        "x-first-death-exchange",
        "x-last-death-reason",
        "x-last-death-queue",
        "x-last-death-exchange",
        "x-received-from",
    }
)
#: Integers a record takes from a message (attempt, generation, x-death counts) are kept
#: within a 32-bit column.
_INT32_MAX = 2**31 - 1


def _clean(text: str) -> bool:
    return storable_text(text) == text


def json_safe(value: Any) -> Any:
    """AMQP header and property values as JSON every store keeps exactly: text when it is
    UTF-8 without NUL or lone surrogates, else ``{"base64": …}`` of its bytes; datetimes as
    ISO 8601; keys with NUL or lone surrogates escaped (``\\u0000``)."""
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(raw).decode()}
        return text if _clean(text) else {"base64": base64.b64encode(raw).decode()}
    if isinstance(value, str):
        if _clean(value):
            return value
        return {"base64": base64.b64encode(value.encode("utf-8", "surrogatepass")).decode()}
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, Mapping):
        return {storable_text(str(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return storable_text(str(value))


def text_of(value: Any) -> str | None:
    """A header value as text for a record's field (reason, ids, x-death names): bytes
    decoded (invalid UTF-8 as ``\\xNN``), NUL and lone surrogates escaped; None for non-text."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", "backslashreplace")
    if not isinstance(value, str) or not value:
        return None
    return storable_text(value)


def _whole(value: Any) -> int | None:
    """An integer from a header; None when it is none or not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _int(value: Any) -> int | None:
    """An integer from a header, kept within a 32-bit column; None when it is none."""
    number = _whole(value)
    return None if number is None else max(-_INT32_MAX, min(number, _INT32_MAX))


def deaths(headers: Mapping[str, Any]) -> list[DeathRecord]:
    """RabbitMQ's ``x-death`` entries, newest first."""
    raw = headers.get("x-death")
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        return []
    records: list[DeathRecord] = []
    for entry in raw:
        if not isinstance(entry, Mapping):
            continue
        time = entry.get("time")
        keys = entry.get("routing-keys") or []
        records.append(
            DeathRecord(
                reason=text_of(entry.get("reason")) or "unknown",
                queue=text_of(entry.get("queue")),
                exchange=text_of(entry.get("exchange")),
                count=_int(entry.get("count")) or 1,
                time=(time if time.tzinfo else time.replace(tzinfo=UTC))
                if isinstance(time, datetime)
                else None,
                routing_keys=[text_of(k) or "" for k in keys]
                if isinstance(keys, Sequence) and not isinstance(keys, str | bytes)
                else [],
            )
        )
    return records


def _platform_death(message: AbstractIncomingMessage, headers: Mapping[str, Any]) -> list[DeathRecord]:
    """The entry for a message a worker moved to the DLQ itself (no ``x-death``)."""
    reason = text_of(headers.get(HEADER_DEAD_REASON))
    if reason is None:
        return []
    at = _whole(headers.get(HEADER_DEAD_AT))  # epoch milliseconds: not a 32-bit count
    try:
        time = datetime.fromtimestamp(at / 1000, UTC) if at is not None else None
    except (OverflowError, OSError, ValueError):
        time = None
    return [
        DeathRecord(
            source="platform",
            reason=reason,
            exchange=message.exchange,
            time=time,
            routing_keys=[message.routing_key] if message.routing_key else [],
        )
    ]


def parse_task_message(body: bytes) -> TaskMessage | None:
    """The task message in ``body``, or None when it is not one."""
    try:
        return TaskMessage.model_validate(json.loads(body))
    except (ValueError, ValidationError, TypeError, RecursionError):
        return None


def own_message(message: AbstractIncomingMessage) -> TaskMessage | None:
    """The task message ``message`` carries when it is a well-formed one (the platform codec
    decodes it: headers and body agree), else None."""
    try:
        return decode(message)
    except MessageDecodeError:
        return None


def record_id(
    task_id: str | None,
    body: bytes,
    headers: Mapping[str, Any],
    routing_key: str,
    *,
    own: bool = True,
    message_id: str | None = None,
) -> str:
    """The task id for a task's own message (``own``); for any other message — malformed, or
    naming no task — a hash of what it carries: body, routing key, message id and headers
    (without those the broker or the platform changes as it is redelivered or dies again,
    ``VOLATILE_HEADERS``). A redelivery of one message finds its record however often it dies;
    two messages published apart (their ids differ) keep a record each; the task's record
    stays its own."""
    if own and task_id and len(task_id) <= MAX_ID_LENGTH and _clean(task_id):
        return task_id
    digest = hashlib.sha256()
    digest.update(body)
    digest.update(routing_key.encode("utf-8", "surrogatepass"))
    digest.update(b"\x00" + (message_id or "").encode("utf-8", "surrogatepass"))
    stable = {k: json_safe(v) for k, v in headers.items() if k not in VOLATILE_HEADERS}
    digest.update(json.dumps(stable, sort_keys=True, default=str).encode())
    return f"msg-{digest.hexdigest()[:40]}"


def _kept_body(raw: bytes) -> tuple[str, BodyEncoding, bool]:
    """The body as a record keeps it: its first MAX_BODY_BYTES (a UTF-8 character cut at the
    bound is left out whole), as text or base64, and whether it was cut."""
    if len(raw) <= MAX_BODY_BYTES:
        text, encoding = body_as_text(raw)
        return text, encoding, False
    kept = raw[:MAX_BODY_BYTES]
    for end in range(len(kept), len(kept) - 4, -1):
        try:
            return kept[:end].decode(), "utf-8", True
        except UnicodeDecodeError:
            continue
    return base64.b64encode(kept).decode(), "base64", True


def dead_letter_from(message: AbstractIncomingMessage, task: BackgroundTask | None) -> DeadLetter:
    """The record for ``message``; ``task`` is the stored task it names, if any."""
    headers = dict(message.headers or {})
    own = own_message(message)
    parsed = own or parse_task_message(message.body)
    header_id = text_of(headers.get(HEADER_TASK_ID))
    # a message-level dead letter is linked to the id its header names, else its body's
    task_id = own.task_id if own else header_id or (text_of(parsed.task_id) if parsed else None)
    kind: Literal["task", "message"] = "task" if own else "message"
    x_death = deaths(headers) or _platform_death(message, headers)
    reason, error = _reason_and_error(headers, task if own else None, x_death)
    body, encoding, truncated = _kept_body(message.body)
    attempt = parsed.attempt if parsed else headers.get(HEADER_RETRY_COUNT)
    now = utcnow()
    return DeadLetter(
        id=record_id(
            task_id,
            message.body,
            headers,
            message.routing_key or "",
            own=own is not None,
            message_id=text_of(message.message_id),
        ),
        kind=kind,
        task_id=task_id,
        task_type=(task.task_type if task else None)
        or (text_of(parsed.task_type) if parsed else text_of(headers.get(HEADER_TASK_TYPE))),
        user_id=(task.user_id if task else None) or (text_of(parsed.user_id) if parsed else None),
        reason=reason,
        error_type=error.type if error else None,
        error_info=error,
        attempt=_int(attempt),
        generation=max(0, _int(parsed.generation) or 0) if parsed else 0,
        exchange=x_death[0].exchange if x_death else message.exchange,
        routing_key=message.routing_key,
        body=body,
        body_encoding=encoding,
        body_size=len(message.body),
        body_sha256=hashlib.sha256(message.body).hexdigest(),
        body_truncated=truncated,
        properties=_properties(message),
        headers=json_safe(headers),
        x_death=x_death,
        first_seen_at=now,
        last_seen_at=now,
    )


def dead_letter_of_task(task: BackgroundTask, *, reason: str, error: ErrorInfo) -> DeadLetter:
    """The record of a task that died without its message reaching the DLQ: its worker vanished
    on its last attempt, and the reaper dead-lettered it. The body is the message that would run
    it again; the one ``x-death`` entry has source "platform"."""
    now = utcnow()
    body = TaskMessage.for_task(task).model_dump_json().encode()
    text, encoding, truncated = _kept_body(body)
    return DeadLetter(
        id=record_id(task.id, b"", {}, ""),
        task_id=task.id,
        task_type=task.task_type,
        user_id=task.user_id,
        reason=reason,
        error_type=error.type,
        error_info=error,
        attempt=task.retry_count,
        generation=task.replays,
        body=text,
        body_encoding=encoding,
        body_size=len(body),
        body_sha256=hashlib.sha256(body).hexdigest(),
        body_truncated=truncated,
        x_death=[DeathRecord(source="platform", reason=reason, time=now)],
        first_seen_at=now,
        last_seen_at=now,
    )


def _reason_and_error(
    headers: Mapping[str, Any], task: BackgroundTask | None, x_death: Sequence[DeathRecord]
) -> tuple[str, ErrorInfo | None]:
    """Why it died and the error to show: the platform's reason when it gave one (a
    malformed message, a failed task), else what RabbitMQ says (e.g. delivery_limit).
    ``task`` is given for a task's own message only: its error is the task's."""
    dead_reason = text_of(headers.get(HEADER_DEAD_REASON))
    if dead_reason is not None:
        detail = text_of(headers.get(HEADER_DEAD_DETAIL)) or dead_reason
        if task is not None and task.error_info is not None and task.error_info.reason == dead_reason:
            return dead_reason, task.error_info
        return dead_reason, ErrorInfo(
            type="DeadLetter", message=detail[:MAX_DETAIL_LENGTH], reason=dead_reason
        )
    if task is not None and task.error_info is not None and task.error_info.reason:
        return task.error_info.reason, task.error_info
    broker_reason = x_death[0].reason if x_death else "unknown"
    message = f"RabbitMQ dead-lettered the message ({broker_reason})"
    return broker_reason, task.error_info if task and task.error_info else ErrorInfo(
        type="DeadLetter", message=message, reason=broker_reason
    )


def _properties(message: AbstractIncomingMessage) -> dict[str, Any]:
    props = {
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "message_id": message.message_id,
        "correlation_id": message.correlation_id,
        "type": message.type,
        "app_id": message.app_id,
        "timestamp": message.timestamp,
        "delivery_mode": int(message.delivery_mode) if message.delivery_mode else None,
        "priority": message.priority,
    }
    return {k: json_safe(v) for k, v in props.items() if v is not None}


class DeadLetterRecords(Protocol):
    async def upsert_dead_letter(self, record: DeadLetter) -> object: ...


async def record_dead_task(
    store: DeadLetterRecords, task: BackgroundTask, *, reason: str, error: ErrorInfo
) -> None:
    """Store the dead-letter record of ``task``, dead-lettered by the platform without its message
    reaching the DLQ (the reaper, the target sweep), so operators can list and replay it. A store
    that refuses is logged: the task is DEAD_LETTER either way."""
    try:
        await store.upsert_dead_letter(dead_letter_of_task(task, reason=reason, error=error))
    except StoreError:
        log.exception("task %s is DEAD_LETTER but its dead-letter record could not be stored", task.id)
