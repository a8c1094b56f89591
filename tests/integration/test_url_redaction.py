"""No error or log line shows the password of the broker or store URL, against a real broker."""

from __future__ import annotations

import asyncio
import logging

import pytest

from taskplatform.errors import BrokerError, StoreError
from taskplatform.messaging.connection import BrokerConnection
from taskplatform.store.sql import SqlTaskStore
from tests.support.services import RABBITMQ_URL, require_rabbitmq

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-Pw%2Fx"  # percent-encoded "/": both spellings must stay hidden


def _leaks(text: str) -> bool:
    return "s3cret-Pw" in text


def _broker_url(port: int | None = None) -> str:
    """The test broker's URL with a wrong password (and another port when given)."""
    scheme, _, rest = RABBITMQ_URL.partition("://")
    host = rest.rsplit("@", 1)[-1]
    if port is not None:
        host = f"{host.split(':', 1)[0].split('/', 1)[0]}:{port}/"
    return f"{scheme}://guest:{PASSWORD}@{host}"


async def test_broker_connection_errors_and_logs_hide_the_password(caplog: pytest.LogCaptureFixture) -> None:
    require_rabbitmq()
    url = _broker_url(port=1)  # nothing listens: a refused login leaves aio-pika's retries running
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(BrokerError) as caught:
            await BrokerConnection(url, name="redaction-test").start()
        background = BrokerConnection(url, name="redaction-test", retry_interval=0.05)
        await background.start(wait=False)
        await asyncio.sleep(0.5)
        with pytest.raises(BrokerError) as not_connected:
            background.connection  # noqa: B018 (the property raises)
        await background.close()
    assert "guest:***@" in str(caught.value) and not _leaks(str(caught.value))
    assert not _leaks(str(not_connected.value))
    lines = [r.getMessage() for r in caplog.records]
    assert any("unreachable" in line for line in lines)
    assert not [line for line in lines if _leaks(line)]


async def test_store_open_errors_and_logs_hide_the_password(caplog: pytest.LogCaptureFixture) -> None:
    # PostgreSQL only: a MongoDB client that never connected leaves a monitor socket behind now
    # and then (a ResourceWarning, an error here); its message names host and port only.
    store = SqlTaskStore(f"postgresql+asyncpg://u:{PASSWORD}@127.0.0.1:1/db")
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(StoreError) as caught:
            await store.open()
        await store.close()
    assert "u:***@127.0.0.1" in str(caught.value) and not _leaks(str(caught.value)), str(caught.value)
    assert not [r.getMessage() for r in caplog.records if _leaks(r.getMessage())]
