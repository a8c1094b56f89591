"""Turning a message from the dead-letter queue into a DeadLetter record (and a task that died
with no message, reaped from a vanished worker, into one).

Everything the broker handed over is kept (body, properties, headers, ``x-death``), made
JSON-safe; the task the message names is read for its last error and owner.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from taskplatform.models import BackgroundTask, DeadLetter, DeathRecord, ErrorInfo, TaskMessage, utcnow
from taskplatform.models.message import (
    HEADER_DEAD_AT,
    HEADER_DEAD_DETAIL,
    HEADER_DEAD_REASON,
    HEADER_RETRY_COUNT,
    HEADER_TASK_ID,
    HEADER_TASK_TYPE,
)

#: Longest id a record may take from a message (longer ones are hashed).
MAX_ID_LENGTH = 200


def json_safe(value: Any) -> Any:
    """AMQP header values as JSON: bytes as text (or base64), datetimes as ISO 8601."""
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


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
                reason=str(json_safe(entry.get("reason")) or "unknown"),
                queue=json_safe(entry.get("queue")),
                exchange=json_safe(entry.get("exchange")),
                count=int(entry.get("count") or 1),
                time=(time if time.tzinfo else time.replace(tzinfo=UTC))
                if isinstance(time, datetime)
                else None,
                routing_keys=[str(json_safe(k)) for k in keys] if isinstance(keys, Sequence) else [],
            )
        )
    return records


def _platform_death(message: AbstractIncomingMessage, headers: Mapping[str, Any]) -> list[DeathRecord]:
    """The entry for a message a worker moved to the DLQ itself (no ``x-death``)."""
    reason = _text(headers.get(HEADER_DEAD_REASON))
    if reason is None:
        return []
    at = _int(headers.get(HEADER_DEAD_AT))
    return [
        DeathRecord(
            source="platform",
            reason=reason,
            exchange=message.exchange,
            time=datetime.fromtimestamp(at / 1000, UTC) if at is not None else None,
            routing_keys=[message.routing_key] if message.routing_key else [],
        )
    ]


def parse_task_message(body: bytes) -> TaskMessage | None:
    """The task message in ``body``, or None when it is not one."""
    try:
        return TaskMessage.model_validate(json.loads(body))
    except (ValueError, ValidationError, TypeError):
        return None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str | None:
    value = json_safe(value)
    return value if isinstance(value, str) and value else None


def record_id(task_id: str | None, body: bytes, headers: Mapping[str, Any], routing_key: str) -> str:
    """The task id; for a message naming no task, a hash of what it carries (without the
    ``x-death`` history, which grows each time it dies), so a duplicate finds its record."""
    if task_id and len(task_id) <= MAX_ID_LENGTH:
        return task_id
    digest = hashlib.sha256()
    digest.update(body)
    digest.update(routing_key.encode())
    stable = {k: json_safe(v) for k, v in headers.items() if k != "x-death"}
    digest.update(json.dumps(stable, sort_keys=True, default=str).encode())
    return f"msg-{digest.hexdigest()[:40]}"


def dead_letter_from(message: AbstractIncomingMessage, task: BackgroundTask | None) -> DeadLetter:
    """The record for ``message``; ``task`` is the stored task it names, if any."""
    headers = dict(message.headers or {})
    parsed = parse_task_message(message.body)
    task_id = parsed.task_id if parsed else _text(headers.get(HEADER_TASK_ID))
    x_death = deaths(headers) or _platform_death(message, headers)
    reason, error = _reason_and_error(headers, task, x_death)
    encoding: Literal["utf-8", "base64"] = "utf-8"
    try:
        body = message.body.decode()
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(message.body).decode(), "base64"
    now = utcnow()
    return DeadLetter(
        id=record_id(task_id, message.body, headers, message.routing_key or ""),
        task_id=task_id,
        task_type=(task.task_type if task else None)
        or (parsed.task_type if parsed else _text(headers.get(HEADER_TASK_TYPE))),
        user_id=(task.user_id if task else None) or (parsed.user_id if parsed else None),
        reason=reason,
        error_type=error.type if error else None,
        error_info=error,
        attempt=parsed.attempt if parsed else _int(headers.get(HEADER_RETRY_COUNT)),
        generation=parsed.generation if parsed else 0,
        exchange=x_death[0].exchange if x_death else message.exchange,
        routing_key=message.routing_key,
        body=body,
        body_encoding=encoding,
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
    message = TaskMessage.for_task(task)
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
        body=message.model_dump_json(),
        x_death=[DeathRecord(source="platform", reason=reason, time=now)],
        first_seen_at=now,
        last_seen_at=now,
    )


def _reason_and_error(
    headers: Mapping[str, Any], task: BackgroundTask | None, x_death: Sequence[DeathRecord]
) -> tuple[str, ErrorInfo | None]:
    """Why it died and the error to show: the platform's reason when it gave one (a
    malformed message, a failed task), else what RabbitMQ says (e.g. delivery_limit)."""
    dead_reason = _text(headers.get(HEADER_DEAD_REASON))
    if dead_reason is not None:
        detail = _text(headers.get(HEADER_DEAD_DETAIL)) or dead_reason
        if task is not None and task.error_info is not None and task.error_info.reason == dead_reason:
            return dead_reason, task.error_info
        return dead_reason, ErrorInfo(type="DeadLetter", message=detail, reason=dead_reason)
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
