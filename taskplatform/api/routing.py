"""The route template a request answered under (``/api/v1/tasks/{task_id}``, never the path
with its ids), for the access log and the request metrics alike."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import fastapi.routing
from starlette.routing import Match
from starlette.types import Scope

#: The route of a request whose path no route has (so random paths cannot grow a label set).
UNMATCHED = "unmatched"


class RouteTemplates:
    """Finds a request's route template; keeps the app's routes once it has listed them."""

    def __init__(self) -> None:
        self._routes: list[Any] | None = None

    def of(self, scope: Scope) -> str:
        """The template of the route that took the request; for one answered before routing
        (a 401 of the guard) or by a mount (``/docs/assets``), the first route that matches it;
        UNMATCHED when none does."""
        path = getattr(scope.get("route"), "path", None)
        if isinstance(path, str):
            return path
        if self._routes is None:
            self._routes = _flat_routes(getattr(scope.get("app"), "routes", ()))
        probe = dict(scope)  # ``matches`` only reads; a copy keeps the request's scope as it was
        for route in self._routes:
            match, _child = route.matches(probe)
            if match is not Match.NONE:
                return str(route.path)
        return UNMATCHED


def _flat_routes(routes: Iterable[Any]) -> list[Any]:
    """The routes of an app in routing order, those of included routers too: FastAPI from 0.16x
    keeps an included router whole in ``app.routes`` and lists its routes through
    ``iter_route_contexts``; earlier versions list the routes themselves."""
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    candidates = flatten(list(routes)) if flatten is not None else routes
    return [r for r in candidates if isinstance(getattr(r, "path", None), str) and hasattr(r, "matches")]
