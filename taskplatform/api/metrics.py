"""Request metrics for the API: count and time every answer by method, route template and status."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskplatform.metrics.registry import Metrics, method_label

#: The route label of requests no route matched (so random paths cannot grow the series).
UNMATCHED = "unmatched"


class RequestMetrics:
    """ASGI middleware; the outermost one, so refusals by the other middleware count too."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self._metrics = metrics

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
            route = _route_of(scope)
            method = method_label(str(scope.get("method", "GET")))
            self._metrics.api_requests.labels(method, route, str(status)).inc()
            self._metrics.api_request_duration.labels(method, route).observe(time.perf_counter() - started)


def _route_of(scope: Scope) -> str:
    """The template of the route that answered: FastAPI's own routes put themselves in the
    scope; Starlette routes (``/docs``, ``/openapi.json``, ``/redoc``) leave only their endpoint,
    found among the router's routes."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    endpoint = scope.get("endpoint")
    if endpoint is not None:
        for candidate in getattr(scope.get("router"), "routes", ()):
            path = getattr(candidate, "path", None)
            if getattr(candidate, "endpoint", None) is endpoint and isinstance(path, str):
                return path
    return UNMATCHED
