"""Progress throttling in the TaskContext: few writes, and the last value always wins."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from taskplatform.events import Delivery, TaskEvent, TaskProgress
from taskplatform.models import BackgroundTask
from taskplatform.tasks.executable import Progress
from taskplatform.worker.context import ExecutionContext


class SlowBus:
    """Records progress writes; each takes ``delay`` seconds (a slow store)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.written: list[float] = []

    async def publish(self, event: TaskEvent, task: BackgroundTask | None = None) -> Delivery:
        await asyncio.sleep(self.delay)
        assert isinstance(event, TaskProgress)
        self.written.append(event.progress["percent"])
        return Delivery(event, task)


class Empty(BaseModel):
    pass


def _context(bus: Any, interval: float) -> ExecutionContext[Empty]:
    task = BackgroundTask(task_type="t")
    return ExecutionContext(task, Empty(), bus=bus, submitter=None, node_id="n", progress_interval=interval)


async def test_updates_while_a_write_is_in_flight_end_with_the_latest_value() -> None:
    bus = SlowBus(delay=0.05)
    ctx = _context(bus, interval=0.01)
    await asyncio.sleep(0.02)  # past the first interval: the next update is written at once
    first = asyncio.create_task(ctx.update_progress(Progress(percent=1)))
    await asyncio.sleep(0.01)  # the first write is in flight
    for value in (2, 3, 100):
        await ctx.update_progress(Progress(percent=value))
    await first
    await asyncio.sleep(0.2)
    await ctx.flush_progress()
    assert bus.written[0] == 1 and bus.written[-1] == 100
    assert 3 not in bus.written[bus.written.index(100) :]


async def test_a_chatty_executable_is_written_about_once_per_interval() -> None:
    bus = SlowBus(delay=0.0)
    ctx = _context(bus, interval=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(1, 501):
        await ctx.update_progress({"percent": i / 5, "message": f"step {i}"})
        await asyncio.sleep(0.001)
    await ctx.flush_progress()
    elapsed = loop.time() - started
    assert len(bus.written) <= elapsed / 0.05 + 2, (len(bus.written), elapsed)
    assert bus.written[-1] == 100.0


async def test_pending_progress_is_written_by_flush_before_the_interval_ends() -> None:
    bus = SlowBus(delay=0.0)
    ctx = _context(bus, interval=60)
    await ctx.update_progress(Progress(percent=10))  # even the first waits one interval
    await ctx.update_progress(Progress(percent=90))
    assert bus.written == []
    await ctx.flush_progress()
    assert bus.written == [90]


async def test_a_short_attempt_hands_its_last_progress_to_the_completion_unwritten() -> None:
    bus = SlowBus(delay=0.0)
    ctx = _context(bus, interval=60)
    await ctx.update_progress(Progress(percent=60, message="scored"))
    assert await ctx.take_pending_progress() == {"percent": 60.0, "message": "scored"}
    assert bus.written == []
    assert await ctx.take_pending_progress() is None


async def test_a_value_left_pending_by_a_finished_flush_never_overwrites_a_newer_one() -> None:
    bus = SlowBus(delay=0.05)
    ctx = _context(bus, interval=0.03)
    await asyncio.sleep(0.04)  # past the first interval
    first = asyncio.create_task(ctx.update_progress(Progress(percent=1)))  # written at once
    await asyncio.sleep(0.005)
    await ctx.update_progress(Progress(percent=2))  # throttled: a flush is scheduled
    await asyncio.sleep(0.035)  # the flush is writing 2
    await ctx.update_progress(Progress(percent=3))  # arrives while that flush writes
    await asyncio.sleep(0.06)
    await ctx.update_progress(Progress(percent=100))
    await first
    await ctx.flush_progress()
    assert bus.written[-1] == 100, bus.written
