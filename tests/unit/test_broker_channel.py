"""``BrokerConnection.channel`` while the connection is down: aiormq's bare RuntimeError becomes
a BrokerError (a transient fault callers retry or answer 503/UNAVAILABLE for, not a bug); on a
connection that is up, a RuntimeError is a bug and goes through as it is."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from taskplatform.errors import BrokerError
from taskplatform.messaging.connection import BrokerConnection


class Connection:
    def __init__(self, up: bool) -> None:
        self.is_closed = False
        self.connected = asyncio.Event()
        if up:
            self.connected.set()

    async def channel(self, **kwargs: Any) -> Any:
        raise RuntimeError('<Connection: "amqp://guest:******@127.0.0.1:5672/"> closed')


def broker(up: bool) -> BrokerConnection:
    made = BrokerConnection("amqp://guest:secret@127.0.0.1:5672/", name="test")
    made._connection = Connection(up)  # type: ignore[assignment]
    return made


async def test_a_channel_asked_of_a_connection_that_is_down_is_a_broker_error() -> None:
    with pytest.raises(BrokerError, match="is down; reconnecting") as raised:
        await broker(up=False).channel()
    assert "secret" not in str(raised.value)
    assert isinstance(raised.value.__cause__, RuntimeError)


async def test_a_runtime_error_on_a_connection_that_is_up_goes_through() -> None:
    with pytest.raises(RuntimeError, match="closed"):
        await broker(up=True).channel()
