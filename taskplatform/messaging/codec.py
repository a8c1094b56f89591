"""Task message <-> AMQP message. Decoding says exactly what was wrong."""

from __future__ import annotations

from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from taskplatform.errors import MessageDecodeError
from taskplatform.models.message import (
    CONTENT_TYPE,
    HEADER_RETRY_COUNT,
    HEADER_TASK_ID,
    HEADER_TASK_TYPE,
    TaskMessage,
)
from taskplatform.models.reasons import DeadLetterReason

APP_ID = "taskplatform"


def encode(message: TaskMessage, *, extra_headers: dict[str, Any] | None = None) -> aio_pika.Message:
    """A persistent AMQP message with the task's routing facts in headers."""
    headers: dict[str, Any] = {
        HEADER_TASK_ID: message.task_id,
        HEADER_TASK_TYPE: message.task_type,
        HEADER_RETRY_COUNT: message.attempt,
    }
    if extra_headers:
        headers.update(extra_headers)
    return aio_pika.Message(
        body=orjson.dumps(message.model_dump(mode="json")),
        content_type=CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message.message_id,
        correlation_id=message.task_id,
        type=message.task_type,
        app_id=APP_ID,
        headers=headers,
    )


def decode(incoming: AbstractIncomingMessage) -> TaskMessage:
    """The task message, or MessageDecodeError(reason, detail).

    Reasons: ``missing-header``, ``bad-json``, ``invalid-body``, ``header-mismatch``.
    """
    headers = incoming.headers or {}
    for name in (HEADER_TASK_ID, HEADER_TASK_TYPE):
        value = headers.get(name)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if not isinstance(value, str) or not value:
            raise MessageDecodeError(DeadLetterReason.MISSING_HEADER, f"header {name!r} is missing or empty")
    try:
        data = orjson.loads(incoming.body)
    except orjson.JSONDecodeError as exc:
        raise MessageDecodeError(DeadLetterReason.BAD_JSON, f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MessageDecodeError(
            DeadLetterReason.INVALID_BODY, f"body must be a JSON object, got {type(data).__name__}"
        )
    try:
        message = TaskMessage.model_validate(data)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise MessageDecodeError(DeadLetterReason.INVALID_BODY, fields) from exc
    if _text(headers.get(HEADER_TASK_ID)) != message.task_id:
        raise MessageDecodeError(
            DeadLetterReason.HEADER_MISMATCH, f"header {HEADER_TASK_ID!r} does not match the body's task_id"
        )
    if _text(headers.get(HEADER_TASK_TYPE)) != message.task_type:
        raise MessageDecodeError(
            DeadLetterReason.HEADER_MISMATCH,
            f"header {HEADER_TASK_TYPE!r} does not match the body's task_type",
        )
    return message


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None
