"""Request body size limit, enforced before the body reaches the application."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskplatform.api.errors import error_response


class BodySizeLimit:
    """Answers 413 when a request body exceeds ``max_bytes``.

    A declared ``Content-Length`` over the limit is refused before reading anything. A
    body without one (chunked) is read up to the limit and then handed on whole, so the
    application never sees a partial body and never holds more than ``max_bytes``.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await error_response(400, "bad_request", "invalid Content-Length header")(
                    scope, receive, send
                )
                return
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            body = message.get("body", b"")
            received += len(body)
            if received > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413, "payload_too_large", f"request body exceeds the limit of {self.max_bytes} bytes"
        )
        await response(scope, receive, send)
