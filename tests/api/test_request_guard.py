"""The request guard in-process: what it answers before the application sees a request."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from taskplatform.api.auth import Authenticator
from taskplatform.api.guard import RequestGuard
from taskplatform.api.limits import BodyBudget
from taskplatform.settings import PlatformSettings
from tests.api.tokens import SECRET, bearer, token


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    message = await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": message.get("body", b"")})


def guard(*, auth: bool = True, budget: int = 4096, max_body: int = 2048) -> RequestGuard:
    settings = PlatformSettings(auth="jwt" if auth else "disabled", jwt_secret=SECRET)
    return RequestGuard(
        echo_app,
        authenticator=Authenticator.from_settings(settings),
        max_body_bytes=max_body,
        body_timeout=0.3,
        budget=BodyBudget(budget),
    )


def scope(path: str = "/api/v1/tasks", **headers: str) -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    }


async def call(
    app: RequestGuard, request: Scope, chunks: list[bytes], *, stall: bool = False
) -> dict[str, Any]:
    """Run one request; the status, headers and body answered, and how many chunks were read."""
    sent: list[Message] = []
    read = 0

    async def receive() -> Message:
        nonlocal read
        if read < len(chunks):
            read += 1
            return {
                "type": "http.request",
                "body": chunks[read - 1],
                "more_body": read < len(chunks) or stall,
            }
        if stall:
            await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(request, receive, send)
    start = sent[0]
    return {
        "status": start["status"],
        "headers": {k.decode(): v.decode() for k, v in start["headers"]},
        "body": b"".join(m.get("body", b"") for m in sent[1:]),
        "read": read,
    }


def test_unauthenticated_api_request_is_answered_401_without_reading_its_body() -> None:
    got = asyncio.run(call(guard(), scope(content_length="10"), [b"0123456789"]))

    assert got["status"] == 401 and got["read"] == 0
    assert got["headers"]["www-authenticate"].startswith('Bearer realm="taskplatform"')
    assert got["headers"]["connection"] == "close"


def test_authenticated_request_gets_its_whole_chunked_body_at_once() -> None:
    request = scope(authorization=bearer(token("alice"))["Authorization"], transfer_encoding="chunked")
    got = asyncio.run(call(guard(), request, [b"ab", b"cd", b"ef"]))

    assert got["status"] == 200 and got["body"] == b"abcdef"


def test_body_beyond_the_budget_answers_503_with_retry_after_and_gives_its_bytes_back() -> None:
    app = guard(auth=False, budget=3000, max_body=2048)
    # A body held by a request in progress counts against the next one.
    assert app.budget.take(2000)
    got = asyncio.run(call(app, scope(transfer_encoding="chunked"), [b"x" * 600, b"x" * 600]))
    assert got["status"] == 503 and got["headers"]["retry-after"] == "1"
    assert got["headers"]["connection"] == "close"
    declared = asyncio.run(call(app, scope(content_length="1500"), [b"x" * 1500]))
    assert declared["status"] == 503 and declared["read"] == 0
    assert app.budget.in_use == 2000
    app.budget.give_back(2000)
    assert asyncio.run(call(app, scope(content_length="1500"), [b"x" * 1500]))["status"] == 200
    assert app.budget.in_use == 0


@pytest.mark.parametrize("headers", [{"content_length": "4096"}, {"transfer_encoding": "chunked"}])
def test_body_over_the_size_limit_answers_413(headers: dict[str, str]) -> None:
    got = asyncio.run(call(guard(auth=False), scope(**headers), [b"x" * 1024] * 4))

    assert got["status"] == 413 and got["read"] < 4


def test_body_that_stalls_answers_408() -> None:
    got = asyncio.run(call(guard(auth=False), scope(transfer_encoding="chunked"), [b"x"], stall=True))

    assert got["status"] == 408 and got["headers"]["connection"] == "close"
