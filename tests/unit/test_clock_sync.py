"""Measuring the store's clock: the best reading, the periodic re-measurement, its gauge and warnings."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any, cast

import pytest

from taskplatform.clock import ClockSync
from taskplatform.metrics import Metrics
from taskplatform.models import utcnow
from taskplatform.store.primitives import ClockSample, best_offset


def test_the_reading_with_the_shortest_round_trip_decides() -> None:
    at = utcnow()
    slow = ClockSample(sent=at, round_trip=0.2, server=at + timedelta(seconds=5))
    fast = ClockSample(sent=at, round_trip=0.002, server=at + timedelta(seconds=1.001))
    assert fast.offset == timedelta(seconds=1)  # the answer is from the round trip's midpoint
    assert best_offset([slow, fast, slow]) == timedelta(seconds=1)


class _Store:
    """Answers ``sync_clock`` with the offsets given, one per call."""

    def __init__(self, *offsets: float) -> None:
        self._offsets = [timedelta(seconds=s) for s in offsets]

    async def sync_clock(self) -> timedelta:
        return self._offsets.pop(0)


def _gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("taskplatform_store_clock_offset_seconds")


async def test_each_measurement_sets_the_gauge_and_a_large_offset_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    sync = ClockSync(cast(Any, _Store(0.004, -70.2)), metrics, interval=60, warn_above=2)
    with caplog.at_level(logging.WARNING, logger="taskplatform.clock"):
        await sync.sync_once()
        assert _gauge(metrics) == pytest.approx(0.004)
        assert caplog.records == []
        await sync.sync_once()
    assert _gauge(metrics) == pytest.approx(-70.2)
    messages = [r.getMessage() for r in caplog.records]
    assert any("+70.200 s off the store's" in m for m in messages), messages  # this host is ahead
    assert any("moved by -70.204 s" in m for m in messages), messages  # and its clock jumped


async def test_a_steady_offset_within_the_bound_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    sync = ClockSync(cast(Any, _Store(1.5, 1.6, -0.3)), metrics, interval=60, warn_above=2)
    with caplog.at_level(logging.WARNING, logger="taskplatform.clock"):
        for _ in range(3):
            await sync.sync_once()
    assert caplog.records == []
    assert _gauge(metrics) == pytest.approx(-0.3)


async def test_run_measures_again_every_interval_until_stopped() -> None:
    calls = 0

    class Counting:
        async def sync_clock(self) -> timedelta:
            nonlocal calls
            calls += 1
            return timedelta(0)

    stop = asyncio.Event()
    sync = ClockSync(cast(Any, Counting()), Metrics(), interval=0.02, warn_above=2)
    task = asyncio.create_task(sync.run(stop))
    await asyncio.sleep(0.15)
    stop.set()
    await asyncio.wait_for(task, timeout=1)
    assert calls >= 3  # open() measured first; then one every interval
