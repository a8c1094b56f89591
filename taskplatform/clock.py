"""Keeping this process on the store's clock: leases are written and judged in it
(``StoreClock.now``), so the offset to it is measured again every ``CLOCK_SYNC_SECONDS``,
shown as a gauge, and logged when large (a host whose clock drifts needs NTP fixed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from taskplatform.metrics.registry import Metrics
from taskplatform.periodic import run_periodically
from taskplatform.store.ports import StoreClock

log = logging.getLogger(__name__)


class ClockSync:
    """Re-measures the store's clock offset every ``interval`` seconds (``store.sync_clock``).

    Logs a WARNING when the offset exceeds ``warn_above`` seconds (corrected for, but a host
    clock that far off needs fixing), and when it moved by more than that since the last
    measurement: a clock jumped, and leases written in between were off by the jump.
    """

    def __init__(self, store: StoreClock, metrics: Metrics, *, interval: float, warn_above: float) -> None:
        self._store = store
        self._metrics = metrics
        self._interval = interval
        self._warn_above = timedelta(seconds=warn_above)
        self._last: timedelta | None = None

    async def sync_once(self) -> int:
        """One measurement (a StoreError keeps the last offset, and is retried next time)."""
        self.observe(await self._store.sync_clock())
        return 0

    def observe(self, offset: timedelta) -> None:
        """Show a measured offset: the gauge, and a warning when it is large or jumped."""
        self._metrics.store_clock_offset.set(offset.total_seconds())
        if self._last is not None and abs(offset - self._last) > self._warn_above:
            log.warning(
                "the store's clock offset moved by %+.3f s since the last measurement (%+.3f s "
                "now): a clock jumped; leases written in between were off by that much",
                (offset - self._last).total_seconds(),
                offset.total_seconds(),
            )
        if abs(offset) > self._warn_above:
            log.warning(
                "this host's clock is %+.3f s off the store's (more than %.1f s): leases use the "
                "store's clock, so this is corrected for, but synchronise this host's clock (NTP)",
                -offset.total_seconds(),
                self._warn_above.total_seconds(),
            )
        self._last = offset

    async def run(self, stop: asyncio.Event) -> None:
        """Measure every ``interval`` seconds until ``stop`` is set (``open()`` measured first)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=self._interval)
        await run_periodically(self.sync_once, stop, interval=self._interval, name="clock sync")
