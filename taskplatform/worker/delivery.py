"""A task delivery as the settler sees it: whether it can still be settled, settling it without
raising when its channel went away, and the copy a dead letter is published as.

Only ``worker/settlement.py`` uses these: it decides what a delivery is told.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import ChannelInvalidStateError

from taskplatform.errors import TRANSIENT_BROKER_ERRORS
from taskplatform.models import utcnow
from taskplatform.models.message import (
    HEADER_DEAD_AT,
    HEADER_DEAD_DETAIL,
    HEADER_DEAD_REASON,
    copy_message_id,
)

log = logging.getLogger("taskplatform.worker.settlement")

#: What acking or rejecting a delivery raises when its channel or connection went away
#: (RuntimeError: aiormq's "Connection closed" for a socket lost mid-call).
_CHANNEL_GONE: tuple[type[BaseException], ...] = (
    *TRANSIENT_BROKER_ERRORS,
    ChannelInvalidStateError,
    RuntimeError,
)


def dead_letter_copy(message: AbstractIncomingMessage, reason: str, detail: str) -> aio_pika.Message:
    """A persistent copy of ``message`` with the ``x-dead-*`` headers that say why it is dead."""
    headers = dict(message.headers or {})
    headers[HEADER_DEAD_REASON] = reason
    headers[HEADER_DEAD_DETAIL] = detail[:1000]
    headers[HEADER_DEAD_AT] = int(utcnow().timestamp() * 1000)
    return aio_pika.Message(
        body=message.body,
        headers=headers,
        content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=copy_message_id(message.message_id, message.body, message.routing_key),
        correlation_id=message.correlation_id,
        type=message.type,
        app_id=message.app_id,
    )


async def settle_delivery(
    message: AbstractIncomingMessage, what: str, action: Callable[[], Awaitable[None]]
) -> bool:
    """Run ``action`` (the ack or nack); False when the delivery's channel is gone."""
    if channel_gone(message):
        log.info("delivery %s: its channel is gone, no %s (the broker returned it)", message.message_id, what)
        return False
    try:
        await action()
    except _CHANNEL_GONE as exc:
        log.info("delivery %s: %s failed, its channel went away (%s)", message.message_id, what, exc)
        return False
    return True


def channel_gone(message: AbstractIncomingMessage) -> bool:
    """Whether the channel ``message`` came on is closed: the broker has returned the delivery
    to its queue and nothing can settle it any more."""
    try:
        return bool(message.channel.is_closed)
    except ChannelInvalidStateError:
        return True
