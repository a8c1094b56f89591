"""Consumes task messages with manual ack and runs their executables."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from pydantic import ValidationError

from taskplatform.errors import (
    InvalidInputError,
    MessageDecodeError,
    PermanentFailure,
    StoreError,
    StoreRefused,
)
from taskplatform.events.models import TaskStarted
from taskplatform.logsetup import task_log_context
from taskplatform.messaging.codec import decode
from taskplatform.messaging.connection import BrokerConnection
from taskplatform.messaging.publisher import TaskPublisher
from taskplatform.metrics.registry import Metrics
from taskplatform.models import RUNNABLE, BackgroundTask, TaskMessage, utcnow
from taskplatform.models.message import HEADER_NOT_BEFORE, AwaitOwner
from taskplatform.ratelimit.admission import RateAdmission, RateStats
from taskplatform.ratelimit.declarations import RateLimit
from taskplatform.ratelimit.limiter import MemoryRateLimiter, RateLimiter
from taskplatform.retry import RetryPolicy
from taskplatform.store.base import BaseTaskStore
from taskplatform.submission import TaskSubmitter, ensure_storable
from taskplatform.tasks.executable import BackgroundTaskExecutable
from taskplatform.tasks.registry import ExecutableRegistry
from taskplatform.worker.attempt import AttemptRunner
from taskplatform.worker.claims import Claimer
from taskplatform.worker.context import ExecutionContext
from taskplatform.worker.dispatch import GateClosed, PriorityGate
from taskplatform.worker.settlement import (
    Failed,
    Outcome,
    Settler,
    Succeeded,
    channel_gone,
    format_traceback,
)
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
        #: (task id, attempt) running in this worker -> set when that attempt is over.
        self._running: dict[tuple[str, int], asyncio.Event] = {}
        self._default_timeout = default_timeout
        self._lease_seconds = lease_seconds
        self._cancel_grace = cancel_grace
        self.processed = 0
        #: Attempts whose outcome could not be stored within the store outage hold (they run again).
        self.unrecorded = 0
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
        # The delivery is handled on an asyncio task of our own, not on the callback's: the
        # channel cancels its callbacks when it closes (a connection blip), and an attempt must
        # outlive its channel — it runs on, its outcome is stored, and the broker's redelivery
        # of its message is settled against that outcome.
        received_at = utcnow()
        key = f"{message.delivery_tag}:{id(message)}"
        task = asyncio.create_task(self._process(message, gate, level, received_at), name=f"delivery-{key}")
        self._in_flight[key] = task
        task.add_done_callback(lambda _t: self._delivery_done(key))

    def _delivery_done(self, key: str) -> None:
        self._in_flight.pop(key, None)
        self.processed += 1

    async def _process(
        self, message: AbstractIncomingMessage, gate: PriorityGate, level: int, received_at: datetime
    ) -> None:
        try:
            await self._handle(message, gate, level, received_at)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Never let a bug kill the consumer; the message goes back for another try (and
            # counts toward the delivery limit, so a bug that always strikes ends in the DLQ).
            log.exception("unexpected error handling message %s; requeueing", message.message_id)
            with contextlib.suppress(Exception):
                await self._settler.requeue(message)

    async def _handle(
        self, message: AbstractIncomingMessage, gate: PriorityGate, level: int, received_at: datetime
    ) -> None:
        try:
            task_message = decode(message)
        except MessageDecodeError as exc:
            await self._settler.reject_malformed(message, exc.reason, exc.detail)
            return
        if task_message.task_type not in self._registry:
            await self._reject_unknown_type(message, task_message)
            return
        not_before = _not_before(message)
        if not_before is not None and (not_before - utcnow()).total_seconds() >= DELIVER_EARLY_SECONDS:
            await self._settler.send_round(
                message,
                task_message,
                "back before its time",
                not_before=not_before,
                await_owner=AwaitOwner.from_headers(message.headers),
            )
            return
        await self._while_running_here(task_message)
        limits = self._rates.limits_of(task_message.task_type)  # empty for most types: nothing to pay
        if limits and not await self._await_rate_slot(message, task_message, limits, received_at):
            return
        while True:
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
                await self._settler.send_round(
                    message,
                    task_message,
                    why,
                    not_before=None,
                    await_owner=AwaitOwner.from_headers(message.headers),
                )
                return
            try:
                if (task_message.task_id, task_message.attempt) not in self._running:
                    await self._claim_and_run(message, task_message, received_at)
                    return
            finally:
                gate.release()
            # The attempt started here while this delivery waited for a slot: wait again.
            await self._while_running_here(task_message)

    async def _while_running_here(self, tm: TaskMessage) -> None:
        """If ``tm``'s attempt runs in this worker (the broker redelivered its message after our
        channel went away, or a duplicate came), wait for it to end, holding no slot; the
        delivery is then settled against what the attempt stored."""
        running = self._running.get((tm.task_id, tm.attempt))
        if running is not None:
            log.info(
                "task %s attempt %d runs here already; holding the message until it ends",
                tm.task_id,
                tm.attempt,
            )
            await running.wait()

    async def _reject_unknown_type(self, message: AbstractIncomingMessage, tm: TaskMessage) -> None:
        """No executable for the message's task type here. The task is dead-lettered only when
        the message is its own current one (same type, attempt, priority, generation) and the
        task waits for it; any other message naming a task is a message-level dead letter that
        leaves the task alone."""
        detail = (
            f"no executable for task type {tm.task_type!r} on this worker; "
            f"registered: {', '.join(self._registry.task_types())}"
        )
        try:
            current = await self._store.get(tm.task_id)
        except StoreError:
            current = None  # cannot tell: treat it as a message-level fault, leave the task be
        if current is not None and _waits_for(current, tm) and current.task_type == tm.task_type:
            await self._settler.dead_letter_task(
                message, tm.task_id, tm.task_type, tm.attempt, "unknown-task-type", detail
            )
            return
        await self._settler.reject_malformed(message, "unknown-task-type", detail)

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
            # Not a requeue (it would count toward the delivery limit): round the delay path.
            log.warning("no rate-limit slot for task %s (%s); sending it round", tm.task_id, exc)
            retry_at = utcnow() + timedelta(seconds=max(self._store_backoff, DELIVER_EARLY_SECONDS * 2))
            await self._settler.send_round(message, tm, "rate limiter unavailable", not_before=retry_at)
            return False
        if come_back is None:
            return True
        when = datetime.fromtimestamp(come_back, UTC)
        await self._settler.send_round(message, tm, "no rate-limit slot within the hold", not_before=when)
        self._rates.note_delayed((utcnow() - received_at).total_seconds())
        return False

    async def _claim_and_run(
        self, message: AbstractIncomingMessage, task_message: TaskMessage, received_at: datetime
    ) -> None:
        if channel_gone(message):
            # The connection dropped while it waited: the broker has it back and redelivers it.
            log.info("message %s: its channel is gone before the claim; leaving it", message.message_id)
            return
        task = await self._claimer.claim(
            message,
            task_message,
            await_owner=AwaitOwner.from_headers(message.headers),
            owner_wait_limit=self._owner_wait_limit(task_message.task_type),
        )
        if task is None:
            return
        running_key = (task.id, task.retry_count)
        done = self._running[running_key] = asyncio.Event()
        try:
            await self._run_and_settle(message, task, received_at)
        finally:
            del self._running[running_key]
            done.set()

    def _owner_wait_limit(self, task_type: str) -> float:
        """How long a message may wait for another worker's live lease: longer than any attempt
        of this type may run (its timeout, the cancel grace) plus two leases."""
        timeout = self._registry.get(task_type).timeout
        attempt_max = timeout if timeout is not None else self._default_timeout
        return attempt_max + self._cancel_grace + 2 * self._lease_seconds

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
        except StoreError:
            await self._settler.give_back_unrecorded(message, task, "its start could not be recorded")
            return
        try:
            outcome, children, progress = await self._run(task, received_at)
        except asyncio.CancelledError:
            # Shutdown ran out of grace: hand the task back unfinished, then stop.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._settler.hand_back(message, task), timeout=5)
            raise
        cls = type(self._executable(task.task_type))
        policy = cls.retry_policy or self._default_policy
        try:
            await self._settler.settle(
                message,
                task,
                outcome,
                policy=policy,
                retryable=cls.retryable_exceptions,
                non_retryable=cls.non_retryable_exceptions,
                children=children,
                progress=progress,
            )
        except StoreRefused as exc:
            # The store answers but will not take this outcome (a value it cannot store): handing
            # the message back would run the attempt again and again, uncounted. Fail it instead.
            log.error(
                "task %s attempt %d: the store refuses its outcome (%s)", task.id, task.retry_count, exc
            )
            refused = Failed(PermanentFailure(f"the attempt's outcome could not be stored: {exc}"), "")
            try:
                await self._settler.settle(message, task, refused, policy=policy, children=children)
            except StoreError:
                # Not even its failure: requeue, which counts, so the delivery limit ends it in the DLQ.
                await self._settler.requeue(message)
        except StoreError:
            self.unrecorded += 1
            await self._settler.give_back_unrecorded(message, task, "its outcome could not be recorded")

    def _started(self, task: BackgroundTask) -> TaskStarted:
        return TaskStarted(
            task_id=task.id,
            task_type=task.task_type,
            occurred_at=task.last_attempt_at or utcnow(),
            attempt=task.retry_count,
            node_id=self._node_id,
        )

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
        outcome = _storable_outcome(await self._attempts.run(task, executable, ctx))
        children = max(ctx.children, earlier)
        if isinstance(outcome, Succeeded) and children == 0:
            progress = await ctx.take_pending_progress()
            if progress is not None and not _storable(progress, "progress"):
                progress = None  # the last progress is best effort; the result must be stored
            return outcome, children, progress
        try:
            await ctx.flush_progress()
        except Exception as exc:  # progress is best effort
            log.warning("task %s: last progress not written: %s", task.id, exc)
        return outcome, children, None


def _storable(value: Any, name: str) -> bool:
    try:
        ensure_storable(value, (name,))
    except InvalidInputError:
        return False
    return True


def _storable_outcome(outcome: Outcome) -> Outcome:
    """A result no store can keep as it is (NUL in text, integers beyond 64 bits, NaN) fails its
    attempt for good, naming the field, instead of failing every write of it."""
    if isinstance(outcome, Succeeded):
        try:
            ensure_storable(outcome.result.model_dump(mode="json"), ("result",))
        except (InvalidInputError, ValueError, TypeError, RecursionError) as exc:
            # (pydantic cannot serialize a result nested too deep: a ValueError of its own)
            error = PermanentFailure(f"the result cannot be stored: {exc}")
            return Failed(error, format_traceback(error))
    return outcome


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
