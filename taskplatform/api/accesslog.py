"""The API's access log: one line per request on the ``taskplatform.access`` logger.

A line names the method, the route template (``/api/v1/tasks/{task_id}``, never the path with
its ids; ``unmatched`` when no route has the path), the status, the time to the last byte of
the answer, the caller's user id (the subject of a token the routes accepted) and the client's
address. Never a header, a query string or a body. Successful probes and scrapes (``/healthz``,
``/readyz``, ``/metrics``) are logged at DEBUG: every few seconds from every probe, they would
otherwise be most of the log.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskplatform.api.routing import RouteTemplates

log = logging.getLogger("taskplatform.access")

#: Routes probes and scrapers call every few seconds: logged at DEBUG when they succeed.
PROBE_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
#: Methods logged as they are; any other is ``OTHER`` (a method is any token a client sends).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


class AccessLog:
    """Pure ASGI middleware logging every HTTP request once it has been answered.

    Put it outside the request guard, so requests the guard refuses (401, 413…) are logged too.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._routes = RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception:
            if status is None:
                status = 500  # what the server answers for an exception no handler took
            raise
        finally:
            self._log(scope, status, (time.perf_counter() - started) * 1000)

    def _log(self, scope: Scope, status: int | None, duration_ms: float) -> None:
        route = self._routes.of(scope)
        ok = status is not None and status < 400
        level = logging.DEBUG if route in PROBE_ROUTES and ok else logging.INFO
        if not log.isEnabledFor(level):
            return
        method = str(scope.get("method", ""))
        method = method if method in METHODS else "OTHER"
        user_id = _user_id(scope)
        client = scope.get("client")
        host = str(client[0]) if client else None
        log.log(
            level,
            "%s %s %s %.1fms user=%s client=%s",
            method,
            route,
            status if status is not None else "-",  # the client left before an answer
            duration_ms,
            user_id or "-",
            host or "-",
            extra={
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(duration_ms, 3),
                "user_id": user_id,
                "client": host,
            },
        )


def _user_id(scope: Scope) -> str | None:
    """The subject of the principal the routes authenticated (``api/auth.py`` keeps it in the
    request state), or None: no token was accepted, or authentication is disabled."""
    state = scope.get("state")
    principal = state.get("principal") if isinstance(state, dict) else None
    subject = getattr(principal, "subject", None)
    return subject if isinstance(subject, str) else None
