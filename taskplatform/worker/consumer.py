"""Consumes task messages with manual ack and runs their executables."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from pydantic import ValidationError

from executors.base import BackgroundTaskExecutable
from executors.registry import ExecutableRegistry
from taskplatform.errors import MessageDecodeError, StoreError
from taskplatform.events.models import TaskRequeued, TaskStarted
from taskplatform.logsetup import task_log_context
from taskplatform.messaging.codec import decode
from taskplatform.messaging.connection import BrokerConnection
from taskplatform.messaging.publisher import TaskPublisher
from taskplatform.metrics.registry import Metrics
from taskplatform.models import RUNNABLE, BackgroundTask, TaskMessage, utcnow
from taskplatform.models.message import HEADER_NOT_BEFORE
from taskplatform.ratelimit.admission import RateAdmission, RateStats
from taskplatform.ratelimit.declarations import RateLimit
from taskplatform.ratelimit.limiter import MemoryRateLimiter, RateLimiter
from taskplatform.retry import RetryPolicy
from taskplatform.store.base import BaseTaskStore
from taskplatform.submission import TaskSubmitter
from taskplatform.worker.attempt import AttemptRunner
from taskplatform.worker.claims import Claimer
from taskplatform.worker.context import ExecutionContext
from taskplatform.worker.dispatch import GateClosed, PriorityGate
from taskplatform.worker.settlement import Failed, Outcome, Settler, Succeeded, format_traceback
from topology.spec import DELIVER_EARLY_SECONDS, Topology

log = logging.getLogger(__name__)


class TaskConsumer:
    """One channel, one consumer per work queue and priority level.

    aio-pika runs each delivery's callback as its own asyncio task. Each queue group runs up
    to ``prefetch`` attempts at once; every priority level's consumer may hold ``prefetch``
    deliveries, and when the group is busy the next free slot goes to the highest level
    waiting (``PriorityGate``). A delivery that waits longer than ``priority_hold`` seconds
    is handed back to its queue. Nothing is acked before its outcome is in the store.

    Deliveries of task types that declare ``rate_limits`` first wait for their slot
    (``RateAdmission``): held here for up to ``rate_limit_hold`` seconds, or sent round the
    delay path. Other types never touch the limiter.
    """

    def __init__(
        self,
        broker: BrokerConnection,
        topology: Topology,
        registry: ExecutableRegistry,
        store: BaseTaskStore,
        settler: Settler,
        publisher: TaskPublisher,
        *,
        node_id: str,
        prefetch: int,
        default_timeout: float,
        lease_seconds: float,
        default_policy: RetryPolicy | None = None,
        store_backoff: float = 1.0,
        store_hold: float = 300.0,
        cancel_poll: float = 1.0,
        cancel_grace: float = 2.0,
        submitter: TaskSubmitter | None = None,
        progress_interval: float = 1.0,
        priority_hold: float = 60.0,
        rate_limiter: RateLimiter | None = None,
        rate_limit_hold: float = 1.0,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._broker = broker
        self._publisher = publisher
        self._topology = topology
        self._registry = registry
        self._store = store
        self._settler = settler
        self._node_id = node_id
        self._prefetch = prefetch
        self._store_backoff = store_backoff
        self._default_policy = default_policy or RetryPolicy()
        self._attempts = AttemptRunner(
            store,
            node_id=node_id,
            default_timeout=default_timeout,
            lease_seconds=lease_seconds,
            cancel_poll=cancel_poll,
            cancel_grace=cancel_grace,
        )
        self._submitter = submitter
        self._progress_interval = progress_interval
        self._priority_hold = priority_hold
        self._gates: dict[str, PriorityGate] = {}
        self._channel: AbstractChannel | None = None
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._instances: dict[str, BackgroundTaskExecutable[Any, Any]] = {}
        self._in_flight: dict[str, asyncio.Task[Any]] = {}
        self._running: set[tuple[str, int]] = set()  # (task id, attempt) running in this worker
        self.processed = 0
        self._rates = RateAdmission(
            MemoryRateLimiter() if rate_limiter is None else rate_limiter,
            {cls.task_type: cls.rate_limits for cls in registry},
            hold=rate_limit_hold,
            store_backoff=store_backoff,
            store_hold=store_hold,
        )
        self._claimer = Claimer(
            store,
            settler,
            running=self._running,
            node_id=node_id,
            lease_seconds=lease_seconds,
            prefetch=prefetch,
            store_backoff=store_backoff,
            store_hold=store_hold,
        )

    async def start(self) -> None:
        """Start consuming every work queue of the topology."""
        self._channel = await self._broker.channel()
        await self._channel.set_qos(prefetch_count=self._prefetch)
        # New gates: stop() closed the old ones (deliveries still holding their slots give
        # them back to the gate they came through).
        self._gates = {wq.group: PriorityGate(self._prefetch) for wq in self._topology.work_queues}
        for wq in self._topology.work_queues:
            # Highest level first: at start-up the broker fills the top levels' credit first.
            for level in reversed(range(len(wq.queues))):
                # declare_queue (passive) registers the queue with the robust channel, so the
                # consumer is restored after a reconnect; get_queue would not be.
                queue = await self._channel.declare_queue(wq.queues[level], passive=True)
                callback = functools.partial(self._on_message, self._gates[wq.group], level)
                tag = await queue.consume(callback, no_ack=False)
                self._consumers.append((queue, tag))
            log.info(
                "consuming %s (%s) at %d priority level(s), %d at a time",
                wq.queue,
                ", ".join(wq.task_types),
                len(wq.queues),
                self._prefetch,
            )

    async def stop(self, grace: float = 30.0) -> None:
        """Stop taking new messages, give in-flight ones ``grace`` seconds, then close.

        Whatever is still unfinished is left unacked: closing the channel returns it to
        the queue and another worker picks it up.
        """
        for queue, tag in self._consumers:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        self._consumers.clear()
        for gate in self._gates.values():
            gate.close()  # deliveries still waiting for a slot are handed back now
        pending = list(self._in_flight.values())
        if pending:
            log.info("waiting up to %.0fs for %d in-flight task(s)", grace, len(pending))
            _done, still = await asyncio.wait(pending, timeout=grace)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=5)
        if self._channel is not None and not self._channel.is_closed:
            with contextlib.suppress(Exception):
                await self._channel.close()
        self._channel = None

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def rate_stats(self) -> RateStats:
        """What rate limiting did in this worker (deliveries held, sent round, longest holds)."""
        return self._rates.stats

    def _executable(self, task_type: str) -> BackgroundTaskExecutable[Any, Any]:
        instance = self._instances.get(task_type)
        if instance is None:
            instance = self._registry.get(task_type)()
            self._instances[task_type] = instance
        return instance

    async def _on_message(self, gate: PriorityGate, level: int, message: AbstractIncomingMessage) -> None:
        received_at = utcnow()
        key = f"{message.delivery_tag}:{id(message)}"
        current = asyncio.current_task()
        if current is not None:
            self._in_flight[key] = current
        try:
            await self._handle(message, gate, level, received_at)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Never let a bug kill the consumer; the message goes back for another try.
            log.exception("unexpected error handling message %s; requeueing", message.message_id)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
        finally:
            self._in_flight.pop(key, None)
            self.processed += 1

    async def _handle(
        self, message: AbstractIncomingMessage, gate: PriorityGate, level: int, received_at: datetime
    ) -> None:
        try:
            task_message = decode(message)
        except MessageDecodeError as exc:
            await self._settler.reject_malformed(message, exc.reason, exc.detail)
            return
        if task_message.task_type not in self._registry:
            await self._settler.dead_letter_task(
                message,
                task_message.task_id,
                task_message.task_type,
                task_message.attempt,
                "unknown-task-type",
                f"no executable for task type {task_message.task_type!r} on this worker; "
                f"registered: {', '.join(self._registry.task_types())}",
            )
            return
        not_before = _not_before(message)
        if not_before is not None and (not_before - utcnow()).total_seconds() >= DELIVER_EARLY_SECONDS:
            await self._send_round(message, task_message, "back before its time", not_before=not_before)
            return
        limits = self._rates.limits_of(task_message.task_type)  # empty for most types: nothing to pay
        if limits and not await self._await_rate_slot(message, task_message, limits, received_at):
            return
        try:
            if not gate.try_acquire():  # the hot path takes a free slot without a timer
                await asyncio.wait_for(gate.acquire(level), self._priority_hold)
        except (TimeoutError, GateClosed) as exc:
            why = (
                "the worker is stopping"
                if isinstance(exc, GateClosed)
                else "higher priorities kept it waiting"
            )
            log.info("handing task %s back to its queue unstarted: %s", task_message.task_id, why)
            await self._send_round(message, task_message, why, not_before=None)
            return
        try:
            await self._claim_and_run(message, task_message, received_at)
        finally:
            gate.release()

    async def _await_rate_slot(
        self,
        message: AbstractIncomingMessage,
        tm: TaskMessage,
        limits: tuple[RateLimit, ...],
        received_at: datetime,
    ) -> bool:
        """Wait for the attempt's rate-limit slot; True when it may go on (to the claim).

        Only a message of a task that still waits to run at its attempt and priority takes a
        slot; any other goes on to the claim, which skips it. No slot within the hold: the
        message goes round the delay path to try again later, and this delivery is acked (no
        attempt is counted).
        """
        try:
            current = await self._store.get(tm.task_id)
        except StoreError:
            current = None  # the claim holds the message through a store outage
        if current is None or not _waits_for(current, tm):
            return True
        try:
            come_back = await self._rates.admit(tm, limits)
        except StoreError as exc:
            log.warning("no rate-limit slot for task %s (%s); returning it to the queue", tm.task_id, exc)
            await message.nack(requeue=True)
            return False
        if come_back is None:
            return True
        when = datetime.fromtimestamp(come_back, UTC)
        await self._send_round(message, tm, "no rate-limit slot within the hold", not_before=when)
        self._rates.note_delayed((utcnow() - received_at).total_seconds())
        return False

    async def _claim_and_run(
        self, message: AbstractIncomingMessage, task_message: TaskMessage, received_at: datetime
    ) -> None:
        if (task_message.task_id, task_message.attempt) in self._running:
            await self._settler.skip(
                message,
                f"task {task_message.task_id} attempt {task_message.attempt} runs in this worker already",
            )
            return
        task = await self._claimer.claim(message, task_message)
        if task is None:
            return
        running_key = (task.id, task.retry_count)
        self._running.add(running_key)
        try:
            await self._run_and_settle(message, task, received_at)
        finally:
            self._running.discard(running_key)

    async def _run_and_settle(
        self, message: AbstractIncomingMessage, task: BackgroundTask, received_at: datetime
    ) -> None:
        context = {
            "task_id": task.id,
            "task_type": task.task_type,
            "attempt": task.retry_count,
            "node_id": self._node_id,
        }
        in_progress = self._metrics.tasks_in_progress.labels(task.task_type) if self._metrics else None
        if in_progress is not None:
            in_progress.inc()
        try:
            with task_log_context(**context):  # every line logged for this attempt carries it
                await self._run_and_settle_in_context(message, task, received_at)
        finally:  # however the attempt ends: settled, given back, lost, or a failure
            if in_progress is not None:
                in_progress.dec()

    async def _run_and_settle_in_context(
        self, message: AbstractIncomingMessage, task: BackgroundTask, received_at: datetime
    ) -> None:
        try:
            await self._settler.publish(self._started(task), task)
            outcome, children, progress = await self._run(task, received_at)
        except asyncio.CancelledError:
            # Shutdown ran out of grace: hand the task back unfinished, then stop.
            self._running.discard((task.id, task.retry_count))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._give_back(message, task), timeout=5)
            raise
        cls = type(self._executable(task.task_type))
        await self._settler.settle(
            message,
            task,
            outcome,
            policy=cls.retry_policy or self._default_policy,
            retryable=cls.retryable_exceptions,
            non_retryable=cls.non_retryable_exceptions,
            children=children,
            progress=progress,
        )

    def _started(self, task: BackgroundTask) -> TaskStarted:
        return TaskStarted(
            task_id=task.id,
            task_type=task.task_type,
            occurred_at=task.last_attempt_at or utcnow(),
            attempt=task.retry_count,
            node_id=self._node_id,
        )

    async def _send_round(
        self, message: AbstractIncomingMessage, tm: TaskMessage, why: str, *, not_before: datetime | None
    ) -> None:
        """Publish a fresh copy of a delivery that does not run now, through the delay path until
        ``not_before`` or straight back to its queue, then ack the delivery: the store is not
        touched, and a requeue would count toward the queue's delivery limit. If the publish
        fails, the delivery itself goes back to the queue."""
        log.debug("sending task %s round: %s", tm.task_id, why)
        try:
            if not_before is None:
                await self._publisher.publish(tm)
            else:
                await self._publisher.publish_not_before(tm, not_before)
        except Exception as exc:
            log.warning("could not send task %s round (%s); returning it to the queue", tm.task_id, exc)
            await asyncio.sleep(self._store_backoff)  # not straight back: the broker may be down
            await message.nack(requeue=True)
            return
        await message.ack()

    async def _give_back(self, message: AbstractIncomingMessage, task: BackgroundTask) -> None:
        """Release the claim (RUNNING -> QUEUED, same attempt) and return the message."""
        # A fresh copy, then ack: requeueing would count a delivery, and a task given back at
        # a few shutdowns in a row would reach the queue's delivery limit and be dead-lettered.
        event = TaskRequeued(
            task_id=task.id, task_type=task.task_type, attempt=task.retry_count, node_id=self._node_id
        )
        try:
            delivery = await self._settler.publish(event, task)
            released = delivery.task if delivery.accepted else None
            if released is not None:
                await self._publisher.publish_task(released)
                await message.ack()
            else:
                await message.nack(requeue=True)
        except Exception:
            await message.nack(requeue=True)
            raise
        log.info("task %s given back unfinished (attempt %d)", task.id, task.retry_count)

    async def _run(
        self, task: BackgroundTask, received_at: datetime
    ) -> tuple[Outcome, int, dict[str, Any] | None]:
        """Run one attempt in its own asyncio task, watched for lease renewal and cancellation.

        Returns the outcome, how many children the task has (submitted by this attempt or,
        for a retried parent, by an earlier one) and, for a plain success, the attempt's last
        progress not written yet (its completion writes it, saving a store write).
        """
        executable = self._executable(task.task_type)
        cls = type(executable)
        earlier = task.sub_task_status_summary.total if task.sub_task_status_summary else 0
        try:
            params = cls.Params.model_validate(task.parameters)
        except ValidationError as exc:
            return Failed(exc, format_traceback(exc)), earlier, None
        ctx: ExecutionContext[Any] = ExecutionContext(
            task,
            params,
            bus=self._settler.bus,
            submitter=self._submitter,
            node_id=self._node_id,
            progress_model=cls.ProgressModel,
            progress_interval=self._progress_interval,
            received_at=received_at,
        )
        outcome = await self._attempts.run(task, executable, ctx)
        children = max(ctx.children, earlier)
        if isinstance(outcome, Succeeded) and children == 0:
            return outcome, children, await ctx.take_pending_progress()
        try:
            await ctx.flush_progress()
        except Exception as exc:  # progress is best effort
            log.warning("task %s: last progress not written: %s", task.id, exc)
        return outcome, children, None


#: The latest ``x-not-before`` taken seriously (a later or unreadable value is ignored: the
#: message is run, not held for ever or crashed on).
_LATEST_NOT_BEFORE_MS = 2**53


def _not_before(message: AbstractIncomingMessage) -> datetime | None:
    value = (message.headers or {}).get(HEADER_NOT_BEFORE)
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < _LATEST_NOT_BEFORE_MS:
        try:
            return datetime.fromtimestamp(value / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _waits_for(task: BackgroundTask, tm: TaskMessage) -> bool:
    """Whether ``task`` still waits to run the attempt ``tm`` announces (at its priority)."""
    return task.status in RUNNABLE and task.retry_count == tm.attempt and task.priority == tm.priority
