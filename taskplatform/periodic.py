"""One loop for the platform's background passes (outbox relay, reaper)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def run_periodically(
    one_pass: Callable[[], Awaitable[int]],
    stop: asyncio.Event,
    *,
    interval: float,
    name: str,
    again_at: int | None = None,
) -> None:
    """Run ``one_pass`` every ``interval`` seconds until ``stop`` is set.

    A pass that fails is logged and the loop goes on. A pass that handled at least
    ``again_at`` items (a full batch) is followed at once by another.
    """
    while not stop.is_set():
        try:
            handled = await one_pass()
        except Exception:
            log.exception("%s pass failed; retrying in %.1fs", name, interval)
            handled = 0
        if again_at is not None and handled >= again_at:
            continue
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass
