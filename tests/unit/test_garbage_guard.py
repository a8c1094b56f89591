"""The suite's guard against unclosed resources: a leaked store connection fails at a known point,
naming what leaked, instead of whichever test (or the session's end) the collector meets it in."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.garbage import collect_garbage_or_fail


async def test_a_connection_only_the_collector_can_free_fails_the_guard_naming_it(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/leak.db")
    try:
        connection = await engine.connect()
        await connection.execute(text("SELECT 1"))
        raw = await connection.get_raw_connection()
        worker = raw.driver_connection._thread  # aiosqlite's thread; it holds no reference to the connection
        del raw
        cycle: list[object] = [connection]
        cycle.append(cycle)  # unreachable but not freed: only the garbage collector finds it
        del connection, cycle
        with pytest.raises(pytest.fail.Exception) as caught:
            collect_garbage_or_fail("this test")
        # The freed connection closes on its own thread and answers on this loop: let it, before
        # the loop ends (else the thread finds the loop closed and the next test reports it).
        await asyncio.to_thread(worker.join, 5)
    finally:
        await engine.dispose()
    message = str(caught.value)
    assert message.startswith("this test left unclosed resources behind")
    assert "non-checked-in connection" in message


def test_nothing_left_behind_passes_the_guard() -> None:
    collect_garbage_or_fail("this test")
