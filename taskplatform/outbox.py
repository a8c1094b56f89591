"""The outbox: the marker that records published messages off the submit path, and the relay that
publishes tasks whose message never made it to the broker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import timedelta

from taskplatform.messaging.publisher import TaskPublisher
from taskplatform.models import TERMINAL, utcnow
from taskplatform.periodic import run_periodically
from taskplatform.store.ports import Outbox

log = logging.getLogger(__name__)

#: How long the outbox leaves an entry to the process holding it (a retry's delayed publish, a
#: priority change's new message) before the relay takes it over.
OWN_PUBLISH_HOLD_SECONDS = 30.0


class PublishedMarker:
    """Marks outbox entries published in batches, off the submit path.

    Marking is off the submit path, so it lingers up to ``linger`` seconds to gather
    more ids per statement. If the process dies before a batch is written, the relay
    republishes those tasks after the grace period; the consumer's claim makes the
    duplicate harmless.
    """

    def __init__(self, store: Outbox, *, max_batch: int = 500, linger: float = 0.05) -> None:
        self._store = store
        self._pending: list[str] = []
        self._max_batch = max_batch
        self._linger = linger
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="outbox-marker")

    def add(self, task_ids: Sequence[str]) -> None:
        if self._task is None:
            raise RuntimeError("PublishedMarker.start() was not called")
        self._pending.extend(task_ids)
        self._idle.clear()
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            if len(self._pending) < self._max_batch:
                await asyncio.sleep(self._linger)
            self._wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                try:
                    await self._store.mark_published(batch)
                except Exception as exc:  # the relay covers us; never lose the loop
                    log.warning(
                        "could not mark %d outbox entries published (%s); the relay will", len(batch), exc
                    )
            self._idle.set()

    async def flush(self) -> None:
        """Wait until everything added so far is written (or given up)."""
        await self._idle.wait()

    async def stop(self) -> None:
        if self._task is None:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.flush(), timeout=5)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None


class OutboxRelay:
    """Finds outbox entries still pending after ``grace`` seconds, leases and publishes them.

    The lease (``lease_seconds``) keeps two relays, in one process or many, from
    publishing the same entry at the same time; a relay that dies mid-batch lets its
    lease lapse and another picks the entries up. An entry whose publish fails is taken again
    after a wait that doubles with each failure, from ``interval`` up to ``max_backoff``, so one
    the broker keeps refusing costs a log line and a store write a minute, not a second.
    """

    def __init__(
        self,
        store: Outbox,
        publisher: TaskPublisher,
        *,
        owner: str,
        interval: float = 1.0,
        grace: float = 10.0,
        lease_seconds: float = 30.0,
        batch_size: int = 200,
        max_backoff: float = 60.0,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._owner = owner
        self._interval = interval
        self._grace = grace
        self._lease = lease_seconds
        self._batch = batch_size
        self._max_backoff = max_backoff
        self.published_total = 0

    def backoff(self, failures: int) -> float:
        """Seconds before an entry that has failed ``failures`` times (this one included) is taken again."""
        return min(self._max_backoff, self._interval * 2.0 ** min(failures - 1, 32))

    async def run_once(self) -> int:
        """One pass; returns how many entries it published."""
        if not self._publisher.ready:
            return 0
        claimed = await self._store.claim_pending_outbox(
            owner=self._owner,
            limit=self._batch,
            # outbox leases are the store's time, like task leases
            lease_until=self._store.now() + timedelta(seconds=self._lease),
            # created_at is the submitting process's clock (the submitter stamps it): this one's
            # for the API's own relay, as before
            created_before=utcnow() - timedelta(seconds=self._grace),
        )
        if not claimed:
            return 0
        # A task that has ended (its message lost, then the task failed, was cancelled or
        # dead-lettered; an aimed task whose queue is gone, dead-lettered by the sweep) has nothing
        # left to run: its entry is closed unpublished, or a publish that keeps failing would hold
        # a place in every batch for good. A replay publishes the task again itself.
        ended = [t.id for t in claimed if t.status in TERMINAL]
        if ended:
            await self._store.mark_published(ended, owner=self._owner)
            log.info("outbox relay closed %d entr(y/ies) of tasks that have ended, unpublished", len(ended))
            claimed = [t for t in claimed if t.status not in TERMINAL]
            if not claimed:
                return 0
        results = await self._publisher.publish_tasks(claimed)  # delay-aware: retries keep their time
        done = [t.id for t, err in zip(claimed, results, strict=True) if err is None]
        for task, err in zip(claimed, results, strict=True):
            if err is not None:
                retry_in = self.backoff(task.outbox.attempts + 1)
                log.warning("relay could not publish task %s (again in %.3gs): %s", task.id, retry_in, err)
                await self._store.record_publish_failure(
                    task.id, f"{type(err).__name__}: {err}", retry_in=retry_in
                )
        await self._store.mark_published(done, owner=self._owner)
        self.published_total += len(done)
        if done:
            log.info("outbox relay published %d task(s)", len(done))
        return len(done)

    async def run(self, stop: asyncio.Event) -> None:
        """Loop until ``stop`` is set; a full batch is followed at once by another pass."""
        await run_periodically(
            self.run_once, stop, interval=self._interval, name="outbox relay", again_at=self._batch
        )
