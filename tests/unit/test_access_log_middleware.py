"""The access-log middleware around small ASGI apps: what it logs when the app raises, when the
client leaves before an answer, and for methods nobody defined."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from taskplatform.api.accesslog import AccessLog
from taskplatform.api.routing import UNMATCHED

ACCESS = "taskplatform.access"


def _scope(method: str = "GET", path: str = "/x") -> Scope:
    return {"type": "http", "method": method, "path": path, "headers": [], "client": ("192.0.2.1", 5000)}


async def _receive() -> Message:
    return {"type": "http.disconnect"}


async def _run(app: Any, scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await AccessLog(app)(scope, _receive, send)
    return sent


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == ACCESS]


async def test_an_exception_no_handler_took_is_logged_as_a_500_and_raised_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=ACCESS)

    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        await _run(broken, _scope())
    [record] = _records(caplog)
    assert record.__dict__["status"] == 500 and record.__dict__["route"] == UNMATCHED
    assert record.__dict__["client"] == "192.0.2.1" and record.__dict__["user_id"] is None


async def test_a_request_left_without_an_answer_logs_no_status(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=ACCESS)

    async def gone(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # the client went away: nothing is sent

    await _run(gone, _scope("POST"))
    [record] = _records(caplog)
    assert record.__dict__["status"] is None and record.levelno == logging.INFO
    assert record.getMessage().startswith("POST unmatched - ")


async def test_a_method_nobody_defined_is_logged_as_other_and_websockets_are_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=ACCESS)

    async def ok(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    sent = await _run(ok, _scope("BREW"))
    await _run(ok, {"type": "websocket", "path": "/ws"})
    assert sent[0]["status"] == 204  # the answer passes through untouched
    [record] = _records(caplog)
    assert record.__dict__["method"] == "OTHER" and record.__dict__["status"] == 204
