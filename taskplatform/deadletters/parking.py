"""The parking queue: where the DLQ consumer puts a dead message the store keeps refusing.

A message the store answers for but will not store after ``DLQ_MAX_CAPTURE_ATTEMPTS`` tries is
published (confirmed) to ``tasks.dlq.parking`` with headers saying why, then acked, so the DLQ
consumer never loops on it. Operators look at parked messages in the RabbitMQ management UI and,
once the cause is fixed, move them back to the DLQ with ``taskplatform dlq unpark``
(``move_parked``), where they are captured again.
"""

from __future__ import annotations

import contextlib
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from taskplatform.models import utcnow
from taskplatform.models.message import copy_message_id

HEADER_PARKED_REASON = "x-parked-reason"
HEADER_PARKED_DETAIL = "x-parked-detail"
HEADER_PARKED_AT = "x-parked-at"  # epoch milliseconds
HEADER_PARKED_ATTEMPTS = "x-parked-attempts"
PARKED_HEADERS = (HEADER_PARKED_REASON, HEADER_PARKED_DETAIL, HEADER_PARKED_AT, HEADER_PARKED_ATTEMPTS)
#: Longest ``x-parked-detail`` (the last error, cut).
MAX_PARKED_DETAIL = 1000


def _copy(message: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
    """``message`` again, persistent, with ``headers``. Not copied: its expiration (a copy
    waiting for an operator must not expire) and ``user_id`` (the broker refuses one that is
    not the publishing connection's user)."""
    return aio_pika.Message(
        body=message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        message_id=copy_message_id(message.message_id, message.body, message.routing_key),
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )


def returned_copy(message: AbstractIncomingMessage) -> aio_pika.Message:
    """``message`` as it was (headers, ``x-death`` included), to publish to the DLQ again; without
    the ``x-delivery-count`` a quorum queue adds to a returned message (the copy is a new one)."""
    headers = {k: v for k, v in (message.headers or {}).items() if k != "x-delivery-count"}
    return _copy(message, headers)


def parked_copy(
    message: AbstractIncomingMessage, *, reason: str, detail: str, attempts: int
) -> aio_pika.Message:
    """The copy of a dead message that goes to the parking queue: body, properties and headers
    as they were (``x-death`` included), plus why it is parked."""
    headers = dict(message.headers or {})
    headers.update(
        {
            HEADER_PARKED_REASON: reason,
            HEADER_PARKED_DETAIL: detail[:MAX_PARKED_DETAIL],
            HEADER_PARKED_AT: int(utcnow().timestamp() * 1000),
            HEADER_PARKED_ATTEMPTS: attempts,
        }
    )
    return _copy(message, headers)


def unparked_copy(message: AbstractIncomingMessage) -> aio_pika.Message:
    """A parked message as it was before it was parked (the ``x-parked-*`` headers removed),
    so it is captured into the same record it would have had."""
    headers = {k: v for k, v in (message.headers or {}).items() if k not in PARKED_HEADERS}
    return _copy(message, headers)


async def move_parked(
    connection: AbstractConnection,
    parking_queue: str,
    dead_letter_queue: str,
    *,
    limit: int | None = None,
) -> int:
    """Move parked messages back to the DLQ (each confirmed before its parked copy is acked),
    at most ``limit`` and never more than the parking queue held when it started (a message
    parked again meanwhile waits for the next run). Returns how many were moved."""
    channel = await connection.channel(publisher_confirms=True)
    try:
        queue = await channel.declare_queue(parking_queue, passive=True)
        waiting = int(queue.declaration_result.message_count or 0)
        wanted = waiting if limit is None else min(limit, waiting)
        moved = 0
        while moved < wanted:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            try:
                await channel.default_exchange.publish(
                    unparked_copy(message), routing_key=dead_letter_queue, mandatory=True
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    await message.nack(requeue=True)
                raise
            await message.ack()
            moved += 1
        return moved
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
