"""BrokerConnection's errors and log lines never show the URL's password, even when the
library's own error text quotes it."""

from __future__ import annotations

import asyncio
import logging

import pytest

from taskplatform.errors import BrokerError
from taskplatform.messaging.connection import BrokerConnection

URL = "amqp://guest:s3cret%2Fpw@rabbit:5672/"


class QuotingBroker(BrokerConnection):
    """Fails every connect with an error that quotes the URL, raw and decoded."""

    async def _connect_once(self) -> object:  # type: ignore[override]
        raise OSError(f"cannot reach {self.url} (as amqp://guest:s3cret/pw@rabbit:5672/)")


async def test_a_failed_connect_names_the_broker_without_the_password() -> None:
    with pytest.raises(BrokerError) as caught:
        await QuotingBroker(URL, name="t").start()
    assert "guest:***@rabbit:5672/" in str(caught.value)
    assert "s3cret" not in str(caught.value)


async def test_retry_log_lines_name_the_broker_without_the_password(caplog: pytest.LogCaptureFixture) -> None:
    broker = QuotingBroker(URL, name="t", retry_interval=0.01)
    with caplog.at_level(logging.WARNING, logger="taskplatform.messaging.connection"):
        await broker.start(wait=False)
        await asyncio.sleep(0.05)
        await broker.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines and all("guest:***@rabbit" in line for line in lines)
    assert not [line for line in lines if "s3cret" in line]
