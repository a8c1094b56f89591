"""What every request passes before the application: the bearer token checked from the headers,
then the body read whole within a time-out, a size limit and the process's body budget.

Nothing of an unauthenticated ``/api/`` request's body is read: it is answered 401 from its
headers and its connection closed. The FastAPI dependencies (``api/auth.py``) still decide the
roles; this only keeps callers without a valid token from costing memory or connections.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskplatform.api.auth import Authenticator
from taskplatform.api.errors import error_response
from taskplatform.api.limits import BodyBudget

#: Paths whose every operation needs a token when authentication is on.
PROTECTED_PREFIX = "/api/"


class RequestGuard:
    """Pure ASGI middleware: authenticates ``/api/`` requests from their headers, then reads the
    body (401, 408, 413 or 503 answered with ``Connection: close`` instead) and replays it whole.

    Args:
        app: the application.
        authenticator: the app's; with authentication disabled nothing is checked here.
        max_body_bytes: a longer body answers 413 (a declared one before anything is read).
        body_timeout: seconds the whole body may take to arrive after the headers; then 408.
        budget: the process's body bytes in flight; a body it cannot hold answers 503.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticator: Authenticator,
        max_body_bytes: int,
        body_timeout: float,
        budget: BodyBudget,
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.budget = budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.authenticator.enabled and scope["path"].startswith(PROTECTED_PREFIX):
            authorization = headers.get(b"authorization")
            try:
                self.authenticator.authenticate(authorization.decode("latin-1") if authorization else None)
            except HTTPException as exc:
                await _answer(scope, send, 401, "unauthorized", str(exc.detail), exc.headers)
                return
        declared = headers.get(b"content-length")
        if declared is None and b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body (HTTP/1.1 needs one of the two for one)
            return
        size = 0
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _answer(scope, send, 400, "bad_request", "invalid Content-Length header")
                return
            if size > self.max_body_bytes:
                await self._too_large(scope, send)
                return
        taken = 0
        try:
            if size and not self.budget.take(size):
                await self._busy(scope, send)
                return
            taken = size
            body, taken = await self._read_body(scope, receive, send, taken)
            if body is not None:
                await self.app(scope, _replay(body, receive), send)
        finally:
            self.budget.give_back(taken)

    async def _read_body(
        self, scope: Scope, receive: Receive, send: Send, taken: int
    ) -> tuple[bytes | None, int]:
        """The whole body, and the budget bytes now held; None once the request was answered
        (or its client left)."""
        chunks: list[bytes] = []
        received = 0
        try:
            async with asyncio.timeout(self.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":  # the client went away
                        return None, taken
                    chunk = message.get("body", b"")
                    received += len(chunk)
                    if received > self.max_body_bytes:
                        await self._too_large(scope, send)
                        return None, taken
                    if received > taken:  # no (or a wrong) declared length: reserve as it comes
                        if not self.budget.take(received - taken):
                            await self._busy(scope, send)
                            return None, taken
                        taken = received
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks), taken
        except TimeoutError:
            await _answer(
                scope,
                send,
                408,
                "request_timeout",
                f"the request body did not arrive within {self.body_timeout:g} s",
            )
            return None, taken

    async def _too_large(self, scope: Scope, send: Send) -> None:
        message = f"request body exceeds the limit of {self.max_body_bytes} bytes"
        await _answer(scope, send, 413, "payload_too_large", message)

    async def _busy(self, scope: Scope, send: Send) -> None:
        retry = str(max(1, math.ceil(self.body_timeout)))
        message = "too many request bodies in flight in this API process; retry later"
        await _answer(scope, send, 503, "unavailable", message, {"Retry-After": retry})


async def _answer(
    scope: Scope,
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Answer without reading (the rest of) the body: the connection closes after the answer, so
    the server does not read the unread body either."""
    response = error_response(status, code, message, headers={**(headers or {}), "Connection": "close"})

    async def no_body() -> Message:
        return {"type": "http.disconnect"}

    await response(scope, no_body, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands over ``body`` at once, then waits for the disconnect."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
