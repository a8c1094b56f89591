"""The outbox relay: publishes tasks whose message never made it to the broker."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from taskplatform.messaging.publisher import TaskPublisher
from taskplatform.models import utcnow
from taskplatform.periodic import run_periodically
from taskplatform.store.ports import Outbox

log = logging.getLogger(__name__)

#: How long the outbox leaves an entry to the process holding it (a retry's delayed publish, a
#: priority change's new message) before the relay takes it over.
OWN_PUBLISH_HOLD_SECONDS = 30.0


class OutboxRelay:
    """Finds outbox entries still pending after ``grace`` seconds, leases and publishes them.

    The lease (``lease_seconds``) keeps two relays, in one process or many, from
    publishing the same entry at the same time; a relay that dies mid-batch lets its
    lease lapse and another picks the entries up.
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
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._owner = owner
        self._interval = interval
        self._grace = grace
        self._lease = lease_seconds
        self._batch = batch_size
        self.published_total = 0

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
        results = await self._publisher.publish_tasks(claimed)  # delay-aware: retries keep their time
        done = [t.id for t, err in zip(claimed, results, strict=True) if err is None]
        for task, err in zip(claimed, results, strict=True):
            if err is not None:
                log.warning("relay could not publish task %s: %s", task.id, err)
                await self._store.record_publish_failure(task.id, f"{type(err).__name__}: {err}")
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
