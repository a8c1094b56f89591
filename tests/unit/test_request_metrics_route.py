"""The route label of a request refused before routing (a 401 of the request guard).

It is counted under the template of the route its path matches, as the access log names it
(``/api/v1/tasks/{task_id}``, never the raw path); a path no route has is ``unmatched``, so random
paths cannot grow the label set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from taskplatform.api.auth import Authenticator, install_auth
from taskplatform.api.guard import RequestGuard
from taskplatform.api.limits import BodyBudget
from taskplatform.api.metrics import RequestMetrics
from taskplatform.api.routes import health_router, tasks_router
from taskplatform.metrics.registry import Metrics
from taskplatform.settings import PlatformSettings
from tests.api.tokens import SECRET


@pytest.fixture
async def served() -> AsyncIterator[tuple[httpx.AsyncClient, Metrics]]:
    metrics = Metrics()
    authenticator = Authenticator.from_settings(PlatformSettings(auth="jwt", jwt_secret=SECRET))
    app = FastAPI()
    install_auth(app, authenticator)
    app.include_router(tasks_router)
    app.include_router(health_router)
    budget = BodyBudget(1 << 20)
    guard = {"authenticator": authenticator, "max_body_bytes": 1 << 16, "body_timeout": 1.0, "budget": budget}
    app.add_middleware(RequestGuard, **guard)  # type: ignore[arg-type]
    app.add_middleware(RequestMetrics, metrics=metrics)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client, metrics


def counted(metrics: Metrics, method: str, route: str, status: int) -> float:
    labels = {"method": method, "route": route, "status": str(status)}
    return metrics.registry.get_sample_value("taskplatform_api_requests_total", labels) or 0.0


async def test_a_guard_refusal_is_counted_under_its_route_template(
    served: tuple[httpx.AsyncClient, Metrics],
) -> None:
    client, metrics = served
    r = await client.get("/api/v1/tasks/3f2b8c1e-0000-4000-8000-000000000000")
    assert r.status_code == 401
    assert counted(metrics, "GET", "/api/v1/tasks/{task_id}", 401) == 1
    assert counted(metrics, "GET", "unmatched", 401) == 0
    r = await client.post("/api/v1/tasks/abc/cancel")
    assert r.status_code == 401
    assert counted(metrics, "POST", "/api/v1/tasks/{task_id}/cancel", 401) == 1


async def test_a_path_no_route_has_is_unmatched(served: tuple[httpx.AsyncClient, Metrics]) -> None:
    client, metrics = served
    r = await client.get("/api/v1/no-such-thing/1234")
    assert r.status_code == 401  # refused by the guard, before routing
    r = await client.get("/random/5678")
    assert r.status_code == 404
    assert counted(metrics, "GET", "unmatched", 401) == 1
    assert counted(metrics, "GET", "unmatched", 404) == 1
    series = [s for m in metrics.registry.collect() for s in m.samples if s.name.endswith("requests_total")]
    assert not any("1234" in s.labels.get("route", "") or "5678" in s.labels.get("route", "") for s in series)
