"""Claiming a delivered task: batched claims, store outages, and taking over from dead owners."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta

from aio_pika.abc import AbstractIncomingMessage

from taskplatform.batching import Coalescer
from taskplatform.errors import StoreError
from taskplatform.models import BackgroundTask, TaskMessage, TaskStatus, utcnow
from taskplatform.store.base import BaseTaskStore, ClaimRequest
from taskplatform.worker.settlement import Settler

log = logging.getLogger(__name__)


class Claimer:
    """Claims the task of a delivery for this node, or settles the delivery when it must not run.

    ``running`` is the consumer's set of (task id, attempt) pairs running in this worker.
    """

    def __init__(
        self,
        store: BaseTaskStore,
        settler: Settler,
        *,
        running: set[tuple[str, int]],
        node_id: str,
        lease_seconds: float,
        prefetch: int,
        store_backoff: float = 1.0,
        store_hold: float = 300.0,
    ) -> None:
        self._store = store
        self._settler = settler
        self._running = running
        self._node_id = node_id
        self._lease = timedelta(seconds=lease_seconds)
        self._store_backoff = store_backoff
        self._store_hold = store_hold
        # Concurrent deliveries share one claim statement (natural batching).
        self._claims: Coalescer[ClaimRequest, BackgroundTask | None] = Coalescer(
            self._claim_batch, max_batch=max(prefetch, 1)
        )

    async def _claim_batch(self, claims: Sequence[ClaimRequest]) -> list[BackgroundTask | None]:
        won = await self._store.try_set_running_many(
            list(dict.fromkeys(claims)), node_id=self._node_id, lease_until=utcnow() + self._lease
        )
        results: list[BackgroundTask | None] = []
        for claim in claims:
            # Only the first delivery of the winning attempt gets the task; a duplicate in the
            # same batch, or a delivery of another attempt, gets nothing.
            task = won.get(claim.task_id)
            if task is not None and task.retry_count == claim.attempt and claim.priority == task.priority:
                del won[claim.task_id]
                results.append(task)
            else:
                results.append(None)
        return results

    async def claim(self, message: AbstractIncomingMessage, tm: TaskMessage) -> BackgroundTask | None:
        """Claim the task for this delivery, or settle the delivery and return None.

        While the store is unreachable the message is held and the claim retried with
        backoff, for up to ``store_hold`` seconds: returning it to the queue at once would
        count a delivery each time, and the quorum queue's delivery limit would dead-letter
        healthy work during a long store outage.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._store_hold
        delay = self._store_backoff
        while True:
            try:
                return await self._claim_once(message, tm)
            except StoreError as exc:
                if loop.time() + delay > deadline:
                    await self._requeue_for_store(message, tm, exc)
                    return None
                log.warning(
                    "store unavailable while claiming task %s (%s); holding it, retrying in %.1fs",
                    tm.task_id,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _claim_once(self, message: AbstractIncomingMessage, tm: TaskMessage) -> BackgroundTask | None:
        task = await self._claims.submit(ClaimRequest(tm.task_id, tm.attempt, tm.priority))
        if task is not None:
            return task
        current = await self._store.get(tm.task_id)
        if current is not None and self._claimed_by_us(current, tm):
            # Our claim committed but its reply was lost (the store error was retried).
            return current
        if current is not None and message.redelivered and self._held_by_live_lease(current, tm):
            # The broker gave this message back: the worker that held it lost its channel,
            # most likely by dying. Wait for its lease to lapse (a live owner keeps renewing
            # it) and take over, instead of acking the task's only message away.
            return await self._await_owner(message, tm)
        if current is None:
            await self._settler.reject_malformed(
                message,
                "unknown-task",
                f"task {tm.task_id!r} does not exist in the store (never stored here, or deleted since)",
            )
        else:
            await self._settler.skip(
                message,
                f"task {tm.task_id} is {current.status} at attempt {current.retry_count}, priority "
                f"{current.priority} (message: attempt {tm.attempt}, priority {tm.priority})",
            )
        return None

    def _claimed_by_us(self, task: BackgroundTask, tm: TaskMessage) -> bool:
        return (
            task.status is TaskStatus.RUNNING
            and not task.awaiting_children  # a parent waiting for children runs nowhere
            and task.execution_node_id == self._node_id
            and task.retry_count == tm.attempt
            and (tm.task_id, tm.attempt) not in self._running
        )

    @staticmethod
    def _held_by_live_lease(task: BackgroundTask, tm: TaskMessage) -> bool:
        return (
            task.status is TaskStatus.RUNNING
            and task.retry_count == tm.attempt
            and task.lease_until is not None
            and task.lease_until > utcnow()
        )

    async def _await_owner(self, message: AbstractIncomingMessage, tm: TaskMessage) -> BackgroundTask | None:
        """Hold a redelivered message until the owner's lease lapses, then claim the task.

        Ends by running it (the owner is gone), acking it (the owner finished), or, after two
        lease lengths with the owner still renewing, returning it to the queue.
        """
        lease = self._lease.total_seconds()
        deadline = asyncio.get_running_loop().time() + 2 * lease
        while True:
            current = await self._store.get(tm.task_id)
            if current is None or not self._held_by_live_lease(current, tm):
                task = await self._claims.submit(ClaimRequest(tm.task_id, tm.attempt, tm.priority))
                if task is not None:
                    log.warning(
                        "task %s: previous owner %s is gone; taking over",
                        tm.task_id,
                        current.execution_node_id if current else None,
                    )
                    return task
                current = await self._store.get(tm.task_id)
                if current is None or not self._held_by_live_lease(current, tm):
                    status = current.status if current else "missing"
                    await self._settler.skip(
                        message, f"task {tm.task_id} is {status} (after waiting for its owner)"
                    )
                    return None
            now = asyncio.get_running_loop().time()
            if now >= deadline:
                log.info(
                    "task %s: owner %s still renews its lease; returning the redelivery to the queue",
                    tm.task_id,
                    current.execution_node_id,
                )
                await message.nack(requeue=True)
                return None
            assert current.lease_until is not None
            wait = (current.lease_until - utcnow()).total_seconds() + 0.05
            await asyncio.sleep(min(max(wait, 0.05), deadline - now))

    async def _requeue_for_store(
        self, message: AbstractIncomingMessage, tm: TaskMessage, exc: Exception
    ) -> None:
        # Without the store we cannot know whether to run: return the message.
        log.warning("store unavailable for too long while claiming task %s (%s); requeueing", tm.task_id, exc)
        await message.nack(requeue=True)
