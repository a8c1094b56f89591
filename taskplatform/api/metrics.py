"""Request metrics for the API: count and time every answer by method, route template and status."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskplatform.api.routing import RouteTemplates
from taskplatform.metrics.registry import Metrics, method_label


class RequestMetrics:
    """ASGI middleware; the outermost one, so refusals by the other middleware count too."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self._metrics = metrics
        self._routes = RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception that escapes every handler answers 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = self._routes.of(scope)
            method = method_label(str(scope.get("method", "GET")))
            self._metrics.api_requests.labels(method, route, str(status)).inc()
            self._metrics.api_request_duration.labels(method, route).observe(time.perf_counter() - started)
