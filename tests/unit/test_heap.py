"""Freezing the start-up heap of a server process (``taskplatform/heap.py``), and that the CLI's
servers do it once started while an app built in-process (tests, embedding) does not; giving the
pages a burst freed back to the system (``HeapTrimmer``)."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from taskplatform import heap
from taskplatform.api import app as app_module
from taskplatform.api.app import create_app
from taskplatform.heap import HeapTrimmer, settle_startup_heap
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


# --- giving freed heap pages back (HeapTrimmer) ---------------------------------------------

PINNED_HEAP = """
import json, sys
from taskplatform.heap import HeapTrimmer, resident_bytes
trimmer = HeapTrimmer(60)
assert trimmer.available
blocks = [bytes(4096) for _ in range(25_000)]  # ~100 MB from malloc (larger than pymalloc's blocks)
pin = bytes(4096)  # above them: the heap cannot shrink from its top
peak = resident_bytes()
del blocks
freed = resident_bytes()
released = trimmer.trim_once()
print(json.dumps({"peak": peak, "freed": freed, "trimmed": resident_bytes(), "released": released}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim and /proc")
def test_a_trim_gives_back_the_pages_a_burst_freed_below_the_heap_top() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PINNED_HEAP], capture_output=True, text=True, timeout=60, check=True
    )
    figures = json.loads(done.stdout)
    mb = {k: v / 1e6 for k, v in figures.items()}
    print(mb)
    # freeing alone kept the pages (they lie below the pinned block) ...
    assert figures["peak"] - figures["freed"] < 20e6, mb
    # ... the trim gave most of them back, and said how much
    assert figures["freed"] - figures["trimmed"] > 80e6, mb
    assert abs(figures["released"] - (figures["freed"] - figures["trimmed"])) < 5e6, mb


def test_a_trim_reports_what_it_gave_back_and_counts_it() -> None:
    readings = iter([300, 100, 100, 120])
    calls: list[int] = []
    trimmer = HeapTrimmer(1, trim=lambda: calls.append(1) or 1, rss=lambda: next(readings))
    assert trimmer.available
    assert trimmer.trim_once() == 200
    assert trimmer.trim_once() == 0  # grew meanwhile: nothing given back, never a negative figure
    assert calls == [1, 1] and trimmer.trims == 2 and trimmer.released == 200


async def test_without_malloc_trim_the_loop_says_so_and_ends(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(heap, "_glibc_malloc_trim", lambda: None)
    trimmer = HeapTrimmer(0.01)
    assert not trimmer.available and trimmer.trim_once() == 0
    with caplog.at_level(logging.INFO, logger="taskplatform.heap"):
        await asyncio.wait_for(trimmer.run(asyncio.Event()), timeout=1)
    assert "no malloc_trim" in caplog.text


def test_a_c_library_without_malloc_trim_gives_no_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap.ctypes.util, "find_library", lambda name: None)
    assert heap._glibc_malloc_trim() is None

    class NoTrim:
        def __init__(self, name: str) -> None:
            pass

        def __getattr__(self, name: str) -> object:
            raise AttributeError(name)

    monkeypatch.setattr(heap.ctypes.util, "find_library", lambda name: "libc.so.6")
    monkeypatch.setattr(heap.ctypes, "CDLL", NoTrim)
    assert heap._glibc_malloc_trim() is None


def test_resident_memory_reads_zero_where_there_is_no_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    assert heap.resident_bytes() > 0

    def missing(*args: object, **kwargs: object) -> object:
        raise FileNotFoundError("/proc/self/statm")

    monkeypatch.setattr("builtins.open", missing)
    assert heap.resident_bytes() == 0


async def test_the_loop_trims_every_interval_until_stopped() -> None:
    calls: list[float] = []
    trimmer = HeapTrimmer(0.02, trim=lambda: calls.append(time.monotonic()) or 1, rss=lambda: 0)
    stop = asyncio.Event()
    task = asyncio.create_task(trimmer.run(stop))
    await asyncio.sleep(0.15)
    stop.set()
    await asyncio.wait_for(task, timeout=1)
    assert 3 <= len(calls) <= 9, calls


@pytest.mark.parametrize("seconds", [60.0, 0.0])
def test_a_runtime_trims_its_heap_unless_the_setting_is_zero(
    seconds: float, make_settings: Callable[..., PlatformSettings]
) -> None:
    runtime = Runtime(make_settings(store_url="memory://", memory_trim_seconds=seconds), role="worker")
    if seconds:
        assert runtime.trimmer is not None and runtime.trimmer.interval == seconds
    else:
        assert runtime.trimmer is None
