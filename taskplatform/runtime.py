"""Builds the platform's parts from one PlatformSettings and runs them together.

The API, the worker and ``dev`` are the same runtime with different parts switched on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from taskplatform import __version__
from taskplatform.clock import ClockSync
from taskplatform.commands import TaskCommands
from taskplatform.deadletters.consumer import DeadLetterConsumer
from taskplatform.deadletters.service import DeadLetterService
from taskplatform.events.aggregator import StateAggregator
from taskplatform.events.bridge import ExternalEventBridge
from taskplatform.events.bus import EventBus
from taskplatform.events.workers import WorkerEventPublisher
from taskplatform.heap import HeapTrimmer
from taskplatform.messaging.connection import BrokerConnection
from taskplatform.messaging.publisher import TaskPublisher
from taskplatform.metrics import Metrics
from taskplatform.metrics.exposition import MetricsServer
from taskplatform.metrics.observer import MetricsObserver
from taskplatform.metrics.sampler import BacklogSampler
from taskplatform.models import MAX_PRIORITY
from taskplatform.outbox import OutboxRelay
from taskplatform.ratelimit.limiter import create_rate_limiter
from taskplatform.reaper import Reaper
from taskplatform.settings import PlatformSettings
from taskplatform.store import TaskStore, create_store
from taskplatform.submission import PublishedMarker, TaskSubmitter
from taskplatform.targets import TargetExpiry, TargetPlanner
from taskplatform.tasks.registry import ENTRY_POINT_GROUP, ExecutableRegistry
from taskplatform.worker.config import WorkerConfig
from taskplatform.worker.consumer import TaskConsumer
from taskplatform.worker.presence import FleetSweep, OnTransition, Presence, WorkerIdentity
from taskplatform.worker.recording import EventRecorder
from taskplatform.worker.settlement import Settler
from topology import Topology, build_topology, declare_topology

log = logging.getLogger(__name__)

#: How long stopping waits for a background pass (outbox relay, reaper) to end by itself.
BACKGROUND_STOP_SECONDS = 5.0


def build_registry(settings: PlatformSettings) -> ExecutableRegistry:
    """Executables from the entry-point group (unless disabled) and the configured modules, and
    the agent's ``run_command`` when ``AGENT_COMMANDS_FILE`` names its allow-list."""
    group = ENTRY_POINT_GROUP if settings.load_entry_points else None
    registry = ExecutableRegistry.discover(settings.executor_modules, entry_point_group=group)
    if settings.agent_commands_file is not None:
        from taskplatform.agent import agent_executable  # only processes that serve it load it

        registry.register(
            agent_executable(
                settings.agent_commands_file, kill_grace_seconds=settings.agent_kill_grace_seconds
            )
        )
    return registry


def build_platform_topology(settings: PlatformSettings, registry: ExecutableRegistry) -> Topology:
    return build_topology(
        registry.queues(),
        prefix=settings.topology_prefix,
        delivery_limit=settings.delivery_limit,
        delay_mode=settings.delay_mode,
        priority_levels=settings.priority_levels,
        max_priority=MAX_PRIORITY,
    )


def build_store(settings: PlatformSettings) -> TaskStore:
    return create_store(
        settings.store_url,
        auto_migrate=settings.store_auto_migrate,
        retention_seconds=settings.task_retention_seconds or None,
        max_connections=settings.store_max_connections,
    )


def build_bus(settings: PlatformSettings, metrics: Metrics) -> EventBus:
    """The event bus; observer errors and drops are counted in ``metrics``."""
    return EventBus(
        observer_buffer=settings.event_observer_buffer,
        on_observer_error=lambda name: metrics.event_subscriber_errors.labels(name).inc(),
        on_observer_drop=lambda name: metrics.event_observer_dropped.labels(name).inc(),
    )


def attach_observers(
    settings: PlatformSettings, bus: EventBus, broker: BrokerConnection, topology: Topology, metrics: Metrics
) -> ExternalEventBridge | None:
    """The external event bridge (when enabled) and the metrics observer on ``bus``."""
    bridge: ExternalEventBridge | None = None
    if settings.events_bridge_enabled:
        bridge = ExternalEventBridge(
            broker,
            topology.events_exchange,
            confirm_timeout=settings.publish_timeout_seconds,
            max_in_flight=settings.publish_max_in_flight,
            types=settings.events_bridge_types,
            metrics=metrics,
        )
        bus.add_observer(bridge)
    bus.add_observer(MetricsObserver(metrics))
    for observer in bus.stats():  # their series at 0 from the start
        metrics.event_subscriber_errors.labels(observer)
        metrics.event_observer_dropped.labels(observer)
    return bridge


def build_relay(settings: PlatformSettings, store: TaskStore, publisher: TaskPublisher) -> OutboxRelay:
    return OutboxRelay(
        store,
        publisher,
        owner=settings.node_id,
        interval=settings.outbox_interval_seconds,
        grace=settings.outbox_grace_seconds,
        lease_seconds=settings.outbox_lease_seconds,
        batch_size=settings.outbox_batch_size,
        max_backoff=settings.outbox_max_backoff_seconds,
    )


def build_reaper(
    settings: PlatformSettings,
    store: TaskStore,
    registry: ExecutableRegistry,
    bus: EventBus,
    aggregator: StateAggregator,
    metrics: Metrics | None = None,
    worker_events: OnTransition | None = None,
) -> Reaper:
    fleet = FleetSweep(
        store,
        retention_seconds=settings.worker_record_retention_seconds or None,
        metrics=metrics,
        on_transition=worker_events,
    )
    return Reaper(
        store,
        registry,
        bus,
        aggregator,
        fleet=fleet,
        targets=TargetExpiry(store, bus, node_id=settings.node_id),
        parent_idle_seconds=settings.parent_reconcile_seconds,
        default_policy=settings.default_retry_policy(),
        node_id=settings.node_id,
        interval=settings.reaper_interval_seconds,
        grace=settings.reaper_grace_seconds,
        retention_seconds=settings.task_retention_seconds or None,
        audit_retention_seconds=settings.audit_retention_seconds or None,
        retention_interval=settings.retention_interval_seconds,
        quiet_after_outage=settings.lease_seconds,
    )


def build_dlq_consumer(runtime: Runtime) -> DeadLetterConsumer:
    """The consumer of the dead-letter queue, over ``runtime``'s parts."""
    settings = runtime.settings
    return DeadLetterConsumer(
        runtime.broker,
        runtime.topology.dead_letter_queue,
        runtime.store,
        runtime.bus,
        node_id=settings.node_id,
        publisher=runtime.publisher,
        parking_queue=runtime.topology.parking_queue,
        metrics=runtime.metrics,
        store_backoff=settings.dlq_capture_backoff_seconds,
        max_attempts=settings.dlq_max_capture_attempts,
        outage_hold=settings.store_outage_hold_seconds,
    )


def build_presence(runtime: Runtime) -> Presence:
    """The consuming process's presence in the fleet registry."""
    consumer = runtime.consumer
    assert consumer is not None
    settings, queues = runtime.settings, runtime.topology.work_queues
    identity = WorkerIdentity(
        node_id=settings.node_id,
        labels=settings.worker_labels,
        task_types=sorted({t for wq in queues for t in wq.task_types}),
        queue_groups=[wq.group for wq in queues],
        version=__version__,
    )
    return Presence(
        runtime.store,
        identity,
        interval=settings.worker_heartbeat_seconds,
        capacity=lambda: consumer.capacity,
        running=lambda: consumer.running,
        metrics=runtime.metrics,
        on_transition=runtime.worker_events,
    )


def build_task_consumer(runtime: Runtime) -> TaskConsumer:
    """The worker: its settler (over an event recorder) and its consumer, over ``runtime``'s parts."""
    config = WorkerConfig.from_settings(
        runtime.settings, dead_letter_exchange=runtime.topology.dead_letter_exchange
    )
    recorder = EventRecorder(runtime.store, runtime.bus, node_id=config.node_id, store_hold=config.store_hold)
    settler = Settler(recorder, runtime.publisher, config)
    return TaskConsumer(
        runtime.broker,
        runtime.topology,
        runtime.registry,
        runtime.store,
        settler,
        config,
        submitter=runtime.submitter,
        rate_limiter=runtime.task_rate_limiter,
        metrics=runtime.metrics,
    )


class Runtime:
    """Store, broker connection, publisher, event bus, state aggregator, external event
    bridge, submitter, relay, reaper, rate limiters and (optionally) consumer."""

    def __init__(
        self,
        settings: PlatformSettings,
        *,
        role: str,
        registry: ExecutableRegistry | None = None,
        store: TaskStore | None = None,
        consume: bool = False,
        relay: bool | None = None,
    ) -> None:
        self.settings = settings
        self.role = role
        self.registry = registry if registry is not None else build_registry(settings)
        self.topology = build_platform_topology(settings, self.registry)
        self.store = store if store is not None else build_store(settings)
        self.metrics = Metrics()
        self.metrics.prepare(self.registry.task_types())
        self.broker = BrokerConnection(settings.amqp_url, name=f"taskplatform-{role}-{settings.node_id}")
        self.publisher = TaskPublisher(
            self.broker,
            self.topology,
            timeout=settings.publish_timeout_seconds,
            attempts=settings.publish_retry_attempts,
            max_in_flight=settings.publish_max_in_flight,
            metrics=self.metrics,
            route_queue_expires=settings.node_queue_expires_seconds,
        )
        #: Executables' ``rate_limits`` (workers) and submissions per user (the API).
        self.task_rate_limiter = create_rate_limiter(settings.rate_limit_backend, self.store)
        self.submit_rate_limiter = create_rate_limiter(settings.api_rate_limit_backend, self.store)
        self.bus = build_bus(settings, self.metrics)
        self.aggregator = StateAggregator(
            self.store, self.bus, node_id=settings.node_id, metrics=self.metrics
        ).attach()
        self.bridge = attach_observers(settings, self.bus, self.broker, self.topology, self.metrics)
        self._build_services(settings)
        self.relay = build_relay(settings, self.store, self.publisher)
        self.relay_enabled = settings.outbox_relay_enabled if relay is None else relay
        #: Worker transitions to the events exchange (with the lifecycle events, when they are on).
        self.worker_events = (
            WorkerEventPublisher(self.publisher, self.topology.events_exchange, node_id=settings.node_id)
            if settings.events_bridge_enabled
            else None
        )
        self.reaper = build_reaper(
            settings, self.store, self.registry, self.bus, self.aggregator, self.metrics, self.worker_events
        )
        #: Cancel, amend, delete and replay: the one service the API, the CLI and the client use.
        self.commands = TaskCommands.for_runtime(self)
        self.consumer = build_task_consumer(self) if consume else None
        self.dlq_consumer = build_dlq_consumer(self) if consume and settings.dlq_consumer_enabled else None
        #: The worker's record in the fleet registry (consuming processes only).
        self.presence = build_presence(self) if self.consumer is not None else None
        self._stop = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self.broker_ready = asyncio.Event()
        #: Set when declaring the topology or starting the consumers failed once connected (a
        #: topology that differs from the broker's, a missing plugin): the process cannot work.
        self.setup_failed = asyncio.Event()
        self.setup_error: BaseException | None = None

    def _build_services(self, settings: PlatformSettings) -> None:
        """The metrics sampler and server, clock sync, submitter and dead-letter service."""
        self.sampler = BacklogSampler(self.store, self.metrics, interval=settings.metrics_sample_seconds)
        self.clock = ClockSync(
            self.store,
            self.metrics,
            interval=settings.clock_sync_seconds,
            warn_above=settings.clock_skew_warn_seconds,
        )
        self.trimmer = HeapTrimmer(settings.memory_trim_seconds) if settings.memory_trim_seconds > 0 else None
        self.metrics_server: MetricsServer | None = None
        if settings.metrics_port is not None:
            self.metrics_server = MetricsServer(
                self.metrics, port=settings.metrics_port, host=settings.metrics_host
            )
        self.marker = PublishedMarker(self.store)
        self.submitter = TaskSubmitter(
            self.store,
            self.registry,
            self.publisher,
            self.marker,
            self.bus,
            aggregator=self.aggregator,
            node_id=settings.node_id,
            targets=TargetPlanner(self.store),
        )
        self.dead_letters = DeadLetterService(
            self.store,
            self.registry,
            self.bus,
            self.submitter,
            node_id=settings.node_id,
            default_rate=settings.dlq_replay_rate,
        )

    async def start(self, *, wait_for_broker: bool = False) -> None:
        """Open the store, connect (now, or in the background), declare topology, consume."""
        await self.store.open()
        self.clock.observe(self.store.clock_offset)  # measured by open(): shown before any scrape
        self.bus.start()
        self.marker.start()
        await self.broker.start(wait=wait_for_broker)
        if wait_for_broker:
            await self._on_broker_up()
        else:
            self._background.append(asyncio.create_task(self._when_connected(), name="broker-up"))
        if self.relay_enabled:
            self._background.append(asyncio.create_task(self.relay.run(self._stop), name="outbox-relay"))
        if self.settings.reaper_enabled:
            self._background.append(asyncio.create_task(self.reaper.run(self._stop), name="reaper"))
        self._background.append(asyncio.create_task(self.sampler.run(self._stop), name="metrics-sampler"))
        self._background.append(asyncio.create_task(self.clock.run(self._stop), name="clock-sync"))
        if self.trimmer is not None:
            self._background.append(asyncio.create_task(self.trimmer.run(self._stop), name="heap-trim"))
        if self.metrics_server is not None:
            self.metrics_server.start()
        log.info(
            "%s started (node %s, store %s, task types: %s)",
            self.role,
            self.settings.node_id,
            self.store.url_scheme,
            ", ".join(self.registry.task_types()) or "none",
        )

    async def _when_connected(self) -> None:
        await self.broker.wait_connected()
        try:
            await self._on_broker_up()
        except Exception as exc:
            log.exception("setup failed once the broker was up: %s", exc)
            self.setup_error = exc
            self.setup_failed.set()

    async def _on_broker_up(self) -> None:
        await declare_topology(self.broker.connection, self.topology)
        self.publisher.mark_topology_ready()
        # Before consuming: one process per node id. A stop during the wait starts nothing.
        if self.presence is not None and not await self.presence.wait_until_sole():
            return
        if self.consumer is not None:
            await self.consumer.start()
        if self.dlq_consumer is not None:
            await self.dlq_consumer.start()
        if self.presence is not None:
            await self.presence.start()  # consuming now: the fleet may count on it
        self.broker_ready.set()

    async def stop(self, grace: float = 30.0) -> None:
        """Stop consuming (in-flight work gets ``grace`` seconds), flush, disconnect, close."""
        self._stop.set()
        if self.presence is not None:
            await self.presence.stopping(grace)
        if self.consumer is not None:
            await self.consumer.stop(grace)
        if self.presence is not None:
            await self.presence.stop()
        if self.dlq_consumer is not None:
            await self.dlq_consumer.stop()
        # The periodic loops see the stop event after their current pass: let that pass end
        # (a store call cancelled midway strands its connection), cancel only what overstays.
        for task in self._background:
            if task.get_name() == "broker-up":  # waits for the broker; holds no store call
                task.cancel()
        if self._background:
            _done, late = await asyncio.wait(self._background, timeout=BACKGROUND_STOP_SECONDS)
            for task in late:
                task.cancel()
            for task in self._background:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._background.clear()
        await self.marker.stop()
        await self.bus.close()
        if self.bridge is not None:
            await self.bridge.close()
        await self.publisher.close()
        await self.broker.close()
        await self.store.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()
