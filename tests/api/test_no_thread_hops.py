"""Every route handler and dependency of the API is a coroutine: FastAPI runs a plain ``def``
one in a worker thread, a thread hand-off (and a slot of a 40-thread pool) per request."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from taskplatform.api.app import create_app
from taskplatform.api.routing import _flat_routes
from taskplatform.settings import PlatformSettings


def _dependants(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _dependants(sub)


def _runs_in_a_thread(call: Callable[..., Any]) -> bool:
    if inspect.isroutine(call):
        return not (inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call))
    dunder = getattr(call, "__call__", None)  # noqa: B004 - an instance FastAPI calls
    return not (inspect.iscoroutinefunction(dunder) or inspect.isasyncgenfunction(dunder))


def sync_calls(app: Any) -> list[str]:
    """What of ``app``'s routes (included routers' too, with their router-level dependencies)
    FastAPI would run in a thread."""
    found: dict[str, None] = {}
    for item in _flat_routes(app.routes):
        # FastAPI from 0.16x lists an included router's routes as contexts around the route
        views = [item, *(getattr(item, a, None) for a in ("route", "_effective_route", "original_route"))]
        for view in views:
            if not isinstance(view, APIRoute):
                continue
            for dependant in _dependants(view.dependant):
                call = dependant.call
                if call is not None and _runs_in_a_thread(call):
                    name = getattr(call, "__qualname__", type(call).__qualname__)
                    found[f"{item.path}: {name}"] = None
    return list(found)


def test_no_route_or_dependency_runs_in_a_worker_thread(
    make_settings: Callable[..., PlatformSettings],
) -> None:
    for auth in ("disabled", "jwt"):
        app = create_app(make_settings(auth=auth, jwt_secret="k3y-f0r-the-route-walk-0123456789abcdef"))
        assert sync_calls(app) == []


def test_the_check_finds_a_plain_def_dependency() -> None:
    from fastapi import APIRouter, Depends, FastAPI

    def plain() -> int:
        return 1

    class Guard:
        def __call__(self) -> int:
            return 1

    app = FastAPI()
    router = APIRouter(prefix="/r", dependencies=[Depends(Guard())])

    @app.get("/x")
    async def handler(a: int = Depends(plain)) -> int:
        return a

    @router.get("/y")
    async def included() -> int:
        return 1

    app.include_router(router)

    local = "test_the_check_finds_a_plain_def_dependency.<locals>"
    assert sync_calls(app) == [f"/x: {local}.plain", f"/r/y: {local}.Guard"]
