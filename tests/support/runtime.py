"""Helpers to run platform runtimes inside a test."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from taskplatform.runtime import Runtime


@contextlib.asynccontextmanager
async def running(runtime: Runtime, *, wait_for_broker: bool = True) -> AsyncIterator[Runtime]:
    await runtime.start(wait_for_broker=wait_for_broker)
    try:
        yield runtime
    finally:
        await runtime.stop(grace=2.0)


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, every: float = 0.05
) -> None:
    """Wait until ``check()`` is true; fail with AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(every)
