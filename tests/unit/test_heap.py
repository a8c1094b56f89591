"""Freezing the start-up heap of a server process (``taskplatform/heap.py``), and that the CLI's
servers do it once started while an app built in-process (tests, embedding) does not."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator

import httpx
import pytest

from taskplatform.api import app as app_module
from taskplatform.api.app import create_app
from taskplatform.heap import settle_startup_heap
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()  # the test session's objects stay collectable


def test_settling_freezes_what_survived_start_up_and_says_so(
    unfrozen: None, caplog: pytest.LogCaptureFixture
) -> None:
    assert gc.get_freeze_count() == 0
    survivor = [object() for _ in range(1000)]
    with caplog.at_level(logging.INFO, logger="taskplatform.heap"):
        frozen = settle_startup_heap()
    assert frozen >= len(survivor) and gc.get_freeze_count() >= len(survivor)
    assert "start-up heap settled" in caplog.text
    # what is made afterwards is the collector's again
    later: list[object] = []
    later.append(later)
    del later
    assert gc.collect() >= 1


@pytest.mark.parametrize("settle", [True, False])
async def test_an_app_settles_its_heap_once_started_only_when_asked(
    settle: bool,
    make_settings: Callable[..., PlatformSettings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(app_module, "settle_startup_heap", lambda: calls.append(1) or 0)
    runtime = Runtime(make_settings(store_url="memory://", auth="disabled"), role="api")

    async def nothing(*args: object, **kwargs: object) -> None:
        return None

    monkeypatch.setattr(runtime, "start", nothing)  # no broker, no store: only the lifespan's order
    monkeypatch.setattr(runtime, "stop", nothing)
    app = create_app(runtime=runtime, settle_heap=settle)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/healthz")).status_code == 200
    assert calls == ([1] if settle else [])
