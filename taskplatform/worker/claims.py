"""Claiming a delivered task: batched claims, store outages, and waiting for other workers' leases."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Container, Sequence
from datetime import timedelta
from typing import Protocol

from aio_pika.abc import AbstractIncomingMessage

from taskplatform.batching import Coalescer
from taskplatform.errors import StoreError
from taskplatform.models import BackgroundTask, TaskMessage, TaskStatus, utcnow
from taskplatform.models.message import AwaitOwner
from taskplatform.models.reasons import DeadLetterReason
from taskplatform.store.base import ClaimRequest
from taskplatform.store.ports import TaskClaims, TaskReads
from taskplatform.worker.config import WorkerConfig
from taskplatform.worker.settlement import Settler

log = logging.getLogger(__name__)

#: How long after its lease ends a waiting message comes back (the owner's last renewal may
#: still be in flight; the reaper gives it more grace still).
OWNER_WAIT_MARGIN = timedelta(seconds=0.5)


class ClaimingStore(TaskReads, TaskClaims, Protocol):
    """What claiming and running an attempt use of the store (get, now, claims, lease renewal)."""


class Claimer:
    """Claims the task of a delivery for this node, or settles the delivery when it must not run.

    ``running`` holds the (task id, attempt) pairs running in this worker.
    """

    def __init__(
        self,
        store: ClaimingStore,
        settler: Settler,
        config: WorkerConfig,
        *,
        running: Container[tuple[str, int]],
    ) -> None:
        self._store = store
        self._settler = settler
        self._running = running
        self._node_id = config.node_id
        self._lease = timedelta(seconds=config.lease_seconds)
        self._store_backoff = config.store_backoff
        self._store_hold = config.store_hold
        # Concurrent deliveries share one claim statement (natural batching).
        self._claims: Coalescer[ClaimRequest, BackgroundTask | None] = Coalescer(
            self._claim_batch, max_batch=max(config.prefetch, 1)
        )

    async def _claim_batch(self, claims: Sequence[ClaimRequest]) -> list[BackgroundTask | None]:
        won = await self._store.try_set_running_many(
            list(dict.fromkeys(claims)), node_id=self._node_id, lease_until=self._store.now() + self._lease
        )
        results: list[BackgroundTask | None] = []
        for claim in claims:
            # Only the first delivery of the winning attempt gets the task; a duplicate in the
            # same batch, or a delivery of another attempt, gets nothing.
            task = won.get(claim.task_id)
            if task is not None and _belongs(claim, task):
                del won[claim.task_id]
                results.append(task)
            else:
                results.append(None)
        return results

    async def claim(
        self,
        message: AbstractIncomingMessage,
        tm: TaskMessage,
        *,
        await_owner: AwaitOwner | None = None,
        owner_wait_limit: float = 600.0,
    ) -> BackgroundTask | None:
        """Claim the task for this delivery, or settle the delivery and return None.

        While the store is unreachable the message is held and the claim retried with
        backoff, for up to ``store_hold`` seconds: returning it to the queue at once would
        count a delivery each time, and the quorum queue's delivery limit would dead-letter
        healthy work during a long store outage. After the hold, a fresh copy goes back to
        the queue and the delivery is acked (no delivery counted).

        ``await_owner``: the message stands in for a redelivery (see ``AwaitOwner``); a
        redelivered message waits for a live owner the same way, for up to
        ``owner_wait_limit`` seconds in all.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._store_hold
        delay = self._store_backoff
        # Whether a claim of ours may have committed unseen: this delivery's claim statement
        # failed (its reply may be what was lost), or it is the copy this node handed back when
        # the store went away while it held (or was taking) the claim.
        unseen = await_owner is not None and await_owner.owner == self._node_id
        while True:
            try:
                return await self._claim_once(message, tm, await_owner, owner_wait_limit, unseen=unseen)
            except StoreError as exc:
                unseen = True
                if loop.time() + delay > deadline:
                    await self._give_back_for_store(message, tm, exc)
                    return None
                log.warning(
                    "store unavailable while claiming task %s (%s); holding it, retrying in %.1fs",
                    tm.task_id,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _claim_once(
        self,
        message: AbstractIncomingMessage,
        tm: TaskMessage,
        await_owner: AwaitOwner | None,
        owner_wait_limit: float,
        *,
        unseen: bool,
    ) -> BackgroundTask | None:
        request = ClaimRequest(tm.task_id, tm.attempt, tm.priority, tm.task_type, tm.generation)
        task = await self._claims.submit(request)
        if task is not None:
            return task
        current = await self._store.get(tm.task_id)
        if current is None:
            await self._settler.reject_malformed(
                message,
                DeadLetterReason.UNKNOWN_TASK,
                f"task {tm.task_id!r} does not exist in the store (never stored here, or deleted since)",
            )
            return None
        if current.task_type != tm.task_type:
            # It names a task of another type: a message of nobody's (a crafted or corrupted one).
            await self._settler.reject_malformed(
                message,
                DeadLetterReason.TASK_MISMATCH,
                f"message of type {tm.task_type!r} names task {tm.task_id!r} of type {current.task_type!r}",
            )
            return None
        if unseen and self._claimed_by_us(current, tm):
            # Our claim committed but its reply was lost (the store error was retried), or a
            # copy of our own given-back message came back: the attempt is ours to run. Only
            # then: a duplicate delivery whose claim simply lost may read the claim of the
            # delivery that won here, answered late, after that attempt ended and left
            # ``_running`` (the read is older than its outcome); running it would run it twice.
            return current
        if self._held_by_live_lease(current, tm) and (message.redelivered or await_owner is not None):
            # The broker gave this message back: the worker that held it lost its channel, most
            # likely by dying. Wait for its lease to lapse (a live owner keeps renewing it) and
            # take over then, rather than ack the task's only message away; but wait outside
            # this worker's slots, by sending the message round the delay path.
            await self._wait_for_owner(message, tm, current, await_owner, owner_wait_limit)
            return None
        if self._died_at(current, tm):
            # The task died at this very attempt; its message may never have reached the DLQ
            # (the channel it was rejected on went away first). Route this one there: the DLQ
            # consumer keeps one record per task, so a second copy only counts as seen again.
            log.info(
                "task %s is %s at attempt %d; its message goes to the DLQ",
                tm.task_id,
                current.status,
                tm.attempt,
            )
            await self._settler.to_dead_letter_queue(message)
            return None
        await self._settler.skip(
            message,
            f"task {tm.task_id} is {current.status} at attempt {current.retry_count}, priority "
            f"{current.priority} (message: attempt {tm.attempt}, priority {tm.priority})",
        )
        return None

    async def _wait_for_owner(
        self,
        message: AbstractIncomingMessage,
        tm: TaskMessage,
        current: BackgroundTask,
        await_owner: AwaitOwner | None,
        limit: float,
    ) -> None:
        owner = current.execution_node_id or "?"
        now = self._store.now()
        wait = await_owner or AwaitOwner.start(owner, now)
        if wait.since > now:  # a start in the future (crafted, or a clock gone wrong) waits from now
            wait = AwaitOwner.start(wait.owner, now)
        waited = (now - wait.since).total_seconds()
        if waited > limit:
            # The owner kept renewing for longer than any attempt of this type may run: it is
            # alive. Its outcome settles the task; if it dies now, the reaper settles it.
            await self._settler.skip(
                message,
                f"task {tm.task_id}: owner {owner} still renews its lease after {waited:.0f}s of waiting; "
                "leaving the task to it (and to the reaper should it vanish)",
            )
            return
        assert current.lease_until is not None
        remaining = current.lease_until - self._store.now() + OWNER_WAIT_MARGIN
        log.info(
            "task %s: owner %s holds its lease for %.1fs more; the message waits outside this worker",
            tm.task_id,
            owner,
            remaining.total_seconds(),
        )
        await self._settler.send_round(
            message, tm, f"waiting for owner {owner}", not_before=utcnow() + remaining, await_owner=wait
        )

    def _claimed_by_us(self, task: BackgroundTask, tm: TaskMessage) -> bool:
        return (
            task.status is TaskStatus.RUNNING
            and not task.awaiting_children  # a parent waiting for children runs nowhere
            and task.execution_node_id == self._node_id
            and task.retry_count == tm.attempt
            and task.priority == tm.priority
            and task.replays == tm.generation
            and (tm.task_id, tm.attempt) not in self._running
        )

    def _held_by_live_lease(self, task: BackgroundTask, tm: TaskMessage) -> bool:
        return (
            task.status is TaskStatus.RUNNING
            and task.retry_count == tm.attempt
            and task.lease_until is not None
            and task.lease_until > self._store.now()
        )

    @staticmethod
    def _died_at(task: BackgroundTask, tm: TaskMessage) -> bool:
        return (
            task.status in (TaskStatus.DEAD_LETTER, TaskStatus.FAILED)
            and task.retry_count == tm.attempt
            and task.replays == tm.generation
        )

    async def _give_back_for_store(
        self, message: AbstractIncomingMessage, tm: TaskMessage, exc: Exception
    ) -> None:
        # Without the store we cannot know whether to run. A fresh copy, not a requeue: a
        # requeue counts toward the delivery limit. Should our claim have committed unseen,
        # the copy waits for this node's lease (or, back here, finds the claim ours).
        log.warning(
            "store unavailable for %.0fs while claiming task %s (%s); handing the message back",
            self._store_hold,
            tm.task_id,
            exc,
        )
        await self._settler.send_round(
            message,
            tm,
            "store unavailable",
            not_before=None,
            await_owner=AwaitOwner.start(self._node_id, self._store.now()),
        )


def _belongs(claim: ClaimRequest, task: BackgroundTask) -> bool:
    """The claimed ``task`` is the one ``claim`` asked for: attempt, priority, type, generation."""
    return (
        task.retry_count == claim.attempt
        and task.priority == claim.priority
        and (claim.task_type is None or task.task_type == claim.task_type)
        and (claim.generation is None or task.replays == claim.generation)
    )
