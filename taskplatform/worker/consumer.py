"""Consumes task messages with manual ack and runs their executables."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from datetime import datetime
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from taskplatform.logsetup import task_log_context
from taskplatform.messaging.connection import BrokerConnection
from taskplatform.metrics.registry import Metrics
from taskplatform.models import BackgroundTask, TaskMessage, utcnow
from taskplatform.models.message import AwaitOwner
from taskplatform.ratelimit.admission import RateStats
from taskplatform.ratelimit.limiter import RateLimiter
from taskplatform.submission import TaskSubmitter
from taskplatform.tasks.executable import BackgroundTaskExecutable
from taskplatform.tasks.registry import ExecutableRegistry
from taskplatform.worker.attempt import AttemptRunner
from taskplatform.worker.claims import Claimer, ClaimingStore
from taskplatform.worker.config import WorkerConfig
from taskplatform.worker.dispatch import GateClosed, PriorityGate
from taskplatform.worker.intake import Intake
from taskplatform.worker.node_queue import queue_missing, republish_until_done
from taskplatform.worker.once import settle_interrupted, started_elsewhere
from taskplatform.worker.selectors import SelectorFollower
from taskplatform.worker.settlement import Settler, channel_gone
from topology.spec import Topology

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
        store: ClaimingStore,
        settler: Settler,
        config: WorkerConfig,
        *,
        submitter: TaskSubmitter | None = None,
        rate_limiter: RateLimiter | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._broker = broker
        self._topology = topology
        self._registry = registry
        self._settler = settler
        self._store = store
        self._config = config
        self._gates: dict[str, PriorityGate] = {}
        self._type_gates: dict[str, PriorityGate] = {}
        self._total_gate: list[PriorityGate] = []
        self._channel: AbstractChannel | None = None
        self._consumers: list[tuple[AbstractQueue, str]] = []
        #: Publishing again the tasks that waited in this node's queue when it was gone.
        self.restoring: asyncio.Task[int] | None = None
        self._selectors = SelectorFollower(
            broker,
            topology,
            config,
            registry,
            consumers=self._consumers,
            handler=functools.partial(self._on_message, None, 0),
        )
        self._instances: dict[str, BackgroundTaskExecutable[Any, Any]] = {}
        self._in_flight: dict[str, asyncio.Task[Any]] = {}
        #: (task id, attempt) running in this worker -> set when that attempt is over.
        self._running: dict[tuple[str, int], asyncio.Event] = {}
        self.processed = 0
        #: Attempts whose outcome could not be stored within the store outage hold (they run again).
        self.unrecorded = 0
        self._intake = Intake(store, settler, registry, config, rate_limiter)
        self._attempts = AttemptRunner(store, config, bus=settler.recorder.bus, submitter=submitter)
        self._claimer = Claimer(store, settler, config, running=self._running)

    async def start(self) -> None:
        """Start consuming every work queue of the topology."""
        self._channel = await self._broker.channel()
        await self._channel.set_qos(prefetch_count=self._config.prefetch)
        # New gates: stop() closed the old ones (deliveries still holding their slots give
        # them back to the gate they came through).
        self._gates = {wq.group: PriorityGate(self._config.prefetch) for wq in self._topology.work_queues}
        # The worker's own caps: one gate per capped task type, one for all its attempts.
        self._type_gates = {t: PriorityGate(n) for t, n in self._config.type_concurrency.items()}
        total = self._config.max_concurrency
        self._total_gate = [PriorityGate(total)] if total is not None and total < self._group_slots else []
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
                self._config.prefetch,
            )
        await self._consume_node_queue(self._channel)
        await self._selectors.start(self._channel)

    async def _consume_node_queue(self, channel: AbstractChannel) -> None:
        """Declare this worker node's own queue (tasks aimed at it), bind it and consume it.

        Durable and quorum: what waits there while the worker is away is kept for it. Its
        deliveries share the slots of their task type's queue group with untargeted work, at
        their priority level (``_handle``). A queue that was gone (it expired, or was deleted,
        with what waited in it) is made again and the tasks waiting for this node published
        again (``worker/node_queue.py``).
        """
        spec = self._topology.node_queue(
            self._config.node_id, expires_seconds=self._config.node_queue_expires
        )
        missing = await queue_missing(self._broker, spec.name)
        queue = await channel.declare_queue(spec.name, durable=True, arguments=dict(spec.arguments))
        for binding in self._topology.node_bindings(self._config.node_id):
            await queue.bind(binding.exchange, routing_key=binding.routing_key)
        callback = functools.partial(self._on_message, None, 0)
        tag = await queue.consume(callback, no_ack=False)
        self._consumers.append((queue, tag))
        log.info("consuming %s (tasks aimed at node %s)", spec.name, self._config.node_id)
        if missing:
            self.restoring = asyncio.create_task(
                republish_until_done(self._store, self._settler.publisher, self._config.node_id),
                name=f"republish-{self._config.node_id}",
            )

    async def stop(self, grace: float = 30.0) -> None:
        """Stop taking new messages, give in-flight ones ``grace`` seconds, then close.

        Whatever is still unfinished is left unacked: closing the channel returns it to
        the queue and another worker picks it up.
        """
        if self.restoring is not None and not self.restoring.done():
            self.restoring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.restoring
        for queue, tag in self._consumers:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        self._consumers.clear()
        for gate in (*self._gates.values(), *self._type_gates.values(), *self._total_gate):
            gate.close()  # deliveries still waiting for a slot are handed back now
        pending = list(self._in_flight.values())
        if pending:
            log.info("waiting up to %.0fs for %d in-flight task(s)", grace, len(pending))
            _done, still = await asyncio.wait(pending, timeout=grace)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=5)
        await self._selectors.stop()
        if self._channel is not None and not self._channel.is_closed:
            with contextlib.suppress(Exception):
                await self._channel.close()
        self._channel = None

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def running(self) -> int:
        """Attempts running in this worker now (claimed, not yet settled)."""
        return len(self._running)

    @property
    def _group_slots(self) -> int:
        return self._config.prefetch * len(self._topology.work_queues)

    @property
    def capacity(self) -> int:
        """Attempts this worker runs at once at most: ``prefetch`` per queue group, or
        ``max_concurrency`` when lower."""
        total = self._config.max_concurrency
        return min(total, self._group_slots) if total is not None else self._group_slots

    @property
    def rate_stats(self) -> RateStats:
        """What rate limiting did in this worker (deliveries held, sent round, longest holds)."""
        return self._intake.rate_stats

    async def _take(self, gates: list[PriorityGate], level: int) -> None:
        """A slot of every gate, in order (the task type's cap, the group's, the worker's), each
        waited for up to ``priority_hold``; on a failure the slots taken are given back."""
        taken: list[PriorityGate] = []
        try:
            for gate in gates:
                if not gate.try_acquire():  # the hot path takes a free slot without a timer
                    await asyncio.wait_for(gate.acquire(level), self._config.priority_hold)
                taken.append(gate)
        except BaseException:
            for gate in reversed(taken):
                gate.release()
            raise

    def _limits_of(self, task_type: str) -> list[PriorityGate]:
        gate = self._type_gates.get(task_type)
        return [gate] if gate is not None else []

    def _gate_of(self, task_message: TaskMessage) -> tuple[PriorityGate, int]:
        """The gate and priority level a delivery from the node queue waits at: its task type's
        queue group (the first group when this worker's topology routes the type nowhere)."""
        wq = self._topology.work_queue_for(task_message.task_type) or self._topology.work_queues[0]
        return self._gates[wq.group], self._topology.level_of(task_message.priority)

    def _executable(self, task_type: str) -> BackgroundTaskExecutable[Any, Any]:
        instance = self._instances.get(task_type)
        if instance is None:
            instance = self._registry.get(task_type)()
            self._instances[task_type] = instance
        return instance

    async def _on_message(
        self, gate: PriorityGate | None, level: int, message: AbstractIncomingMessage
    ) -> None:
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
        self, message: AbstractIncomingMessage, gate: PriorityGate | None, level: int, received_at: datetime
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
        self, message: AbstractIncomingMessage, gate: PriorityGate | None, level: int, received_at: datetime
    ) -> None:
        task_message = await self._intake.check(message)
        if task_message is None:
            return
        if gate is None:  # from the node queue: the slots of the task type's group, at its level
            gate, level = self._gate_of(task_message)
        await self._while_running_here(task_message)
        if not await self._intake.rate_slot(message, task_message, received_at):
            return
        gates = [*self._limits_of(task_message.task_type), gate, *self._total_gate]
        while True:
            try:
                await self._take(gates, level)
            except (TimeoutError, GateClosed) as exc:
                why = (
                    "the worker is stopping"
                    if isinstance(exc, GateClosed)
                    else "higher priorities kept it waiting"
                    if len(gates) == 1
                    else "higher priorities or the worker's limits kept it waiting"
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
                for taken in gates:
                    taken.release()
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

    async def _claim_and_run(
        self, message: AbstractIncomingMessage, task_message: TaskMessage, received_at: datetime
    ) -> None:
        if channel_gone(message):
            # The connection dropped while it waited: the broker has it back and redelivers it.
            log.info("message %s: its channel is gone before the claim; leaving it", message.message_id)
            return
        if self._registry.get(task_message.task_type).at_most_once and await started_elsewhere(
            self._store, self._settler, message, task_message
        ):
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
        attempt_max = timeout if timeout is not None else self._config.default_timeout
        return attempt_max + self._config.cancel_grace + 2 * self._config.lease_seconds

    async def _run_and_settle(
        self, message: AbstractIncomingMessage, task: BackgroundTask, received_at: datetime
    ) -> None:
        context = {
            "task_id": task.id,
            "task_type": task.task_type,
            "attempt": task.retry_count,
            "node_id": self._config.node_id,
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
        if not await self._settler.start(message, task):
            return
        executable = self._executable(task.task_type)
        try:
            outcome, children, progress = await self._attempts.run_claimed(task, executable, received_at)
        except asyncio.CancelledError:
            # Shutdown ran out of grace: hand the task back unfinished (an at-most-once one
            # fails for good instead), then stop.
            cls = type(executable)
            settling = (
                settle_interrupted(
                    self._settler,
                    message,
                    task,
                    node_id=self._config.node_id,
                    policy=cls.retry_policy or self._config.default_policy,
                )
                if cls.at_most_once
                else self._settler.hand_back(message, task)
            )
            with contextlib.suppress(Exception):
                await asyncio.wait_for(settling, timeout=5)
            raise
        cls = type(executable)
        recorded = await self._settler.settle_attempt(
            message,
            task,
            outcome,
            policy=cls.retry_policy or self._config.default_policy,
            retryable=cls.retryable_exceptions,
            non_retryable=cls.non_retryable_exceptions,
            children=children,
            progress=progress,
        )
        if not recorded:
            self.unrecorded += 1
