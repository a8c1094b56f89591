"""A worker's presence in the fleet registry: its record written on start, every interval, and as
it stops.

One small write per interval (``WORKER_HEARTBEAT_SECONDS``), never per task: the record says who
the worker is (node, host, pid, labels, version), what it serves (task types, queue groups), how
much (concurrency) and how busy it was at the beat (running attempts). Times are the store's
clock, so every process judges presence alike: the record is present until ``expires_at``, three
intervals after the beat. While the worker drains on shutdown it writes ``stopping`` with an
``expires_at`` past the drain's grace, then ``stopped``; a worker killed outright stops beating,
and the reaper's sweep marks it ``offline``.

Before the worker consumes, ``wait_until_sole`` makes sure no other live process holds its node id
(claims, leases and the node queue are keyed by it: two processes with one id would each take the
other's claims for their own). A record of the id written by another process (host and pid) and
still present is waited out: a predecessor killed without stopping lapses within three of its
intervals, one draining ends with ``stopped`` (it is waited for). If an ``online`` record is beaten
again meanwhile, the other process is alive: ``NodeIdInUse``, and the worker does not start.

What the check does not see (a per-process token in the record, compared at every beat, would):
two processes started with one id at the same moment (both find no record); a holder that could
not beat for three intervals (a store outage, a stalled loop) whose record lapsed, and that goes on
afterwards; and a holder on the same host with the same pid (containers sharing a host name,
each its own pid 1), taken for this process itself.

A beat that finds no record, or one ``offline``/``stopped``, is the worker coming online (again):
it is logged, counted and handed to ``on_transition``. A store outage makes the beat fail: it is
logged once, and the next beats try again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from taskplatform.errors import NodeIdInUse, StoreError
from taskplatform.metrics.registry import Metrics
from taskplatform.models.worker import MISSED_BEATS, WorkerRecord, WorkerState
from taskplatform.store.ports import StoreClock
from taskplatform.store.record_ports import WorkerRegistry

log = logging.getLogger(__name__)

#: How long one registry write may take (a beat, ``stopping``, the last one as it exits).
FINAL_WRITE_SECONDS = 5.0

#: How long past the holder's record's expiry (as seen when it began to stop, or when first seen)
#: ``wait_until_sole`` waits for a node id held by a process that is ``stopping`` and keeps beating.
SOLE_WAIT_LIMIT_SECONDS = 120.0
#: What a record held before a beat when that beat brings the worker online (None: no record).
_ABSENT = (None, WorkerState.OFFLINE, WorkerState.STOPPED)
#: Called with the record written and the state the store held before (None: new) when a beat
#: brings the worker online, and when it stops cleanly.
OnTransition = Callable[[WorkerRecord, WorkerState | None], Awaitable[None]]


class PresenceStore(WorkerRegistry, StoreClock, Protocol):
    """What presence uses of the store: the registry and the store's clock."""


@dataclass(frozen=True)
class WorkerIdentity:
    """What a worker's record says of it besides its state and load."""

    node_id: str
    labels: dict[str, str]
    task_types: Sequence[str]
    queue_groups: Sequence[str]
    version: str
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)


class Presence:
    """Keeps this worker's record in the registry (``start``, the loop, ``stopping``, ``stop``)."""

    def __init__(
        self,
        store: PresenceStore,
        identity: WorkerIdentity,
        *,
        interval: float,
        capacity: Callable[[], int],
        running: Callable[[], int],
        metrics: Metrics | None = None,
        on_transition: OnTransition | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        self._store = store
        self._identity = identity
        self._interval = interval
        self._capacity = capacity
        self._running = running
        self._metrics = metrics
        self._on_transition = on_transition
        self._state = WorkerState.ONLINE
        self._started_at: datetime | None = None
        self._changed_at: datetime | None = None
        #: Extra life of a ``stopping`` record: the drain's grace.
        self._grace = 0.0
        self._failing = False
        self._stop = asyncio.Event()
        self._writing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        #: Beats written (for tests and stats).
        self.beats = 0

    @property
    def state(self) -> WorkerState:
        return self._state

    async def wait_until_sole(self) -> bool:
        """Return True once no other live process holds this node id (see the module's
        docstring), False if the worker is stopped meanwhile; ``NodeIdInUse`` if one does. A
        holder that is ``stopping`` is waited for (its drain is bounded by its grace), at most
        ``SOLE_WAIT_LIMIT_SECONDS`` past its record's expiry as seen when it began to stop. A
        registry that cannot be read is read again every interval until it answers (the worker
        could not claim anything meanwhile either), logged once."""
        identity = self._identity
        first: WorkerRecord | None = None
        draining = False
        deadline = 0.0
        unreadable = False
        loop = asyncio.get_running_loop()
        began = loop.time()
        while not self._stop.is_set():
            try:
                async with asyncio.timeout(FINAL_WRITE_SECONDS):
                    record = await self._store.get_worker(identity.node_id)
            except (StoreError, TimeoutError) as exc:
                if not unreadable:
                    log.warning(
                        "worker %s: cannot read the registry to check its node id (%s); trying again "
                        "every %.0fs before consuming",
                        identity.node_id,
                        exc,
                        self._interval,
                    )
                unreadable = True
                await self._pause(self._interval)
                continue
            now = self._store.now()
            if (
                record is None
                or not record.online_at(now)
                or (record.host, record.pid) == (identity.host, identity.pid)
            ):
                if first is not None or unreadable:
                    log.info("worker %s: its node id is free; starting", identity.node_id)
                return True
            held = f"node id {identity.node_id!r} is in use by pid {record.pid} on {record.host}"
            left = (record.expires_at - now).total_seconds()
            if first is None:
                first = record
                deadline = loop.time() + left + SOLE_WAIT_LIMIT_SECONDS
                log.warning(
                    "worker %s: %s (%s, last beat %s): waiting until it lapses or stops",
                    identity.node_id,
                    held,
                    record.state,
                    record.last_seen_at.isoformat(),
                )
            elif record.state is WorkerState.ONLINE and record.last_seen_at > first.last_seen_at:
                raise NodeIdInUse(
                    f"{held} (it beat again at {record.last_seen_at.isoformat()}): give every worker "
                    "process its own TASKPLATFORM_NODE_ID"
                )
            if record.state is WorkerState.STOPPING and not draining:
                draining = True  # its drain has its own grace: waited for from here
                deadline = loop.time() + left + SOLE_WAIT_LIMIT_SECONDS
            elif loop.time() > deadline:
                raise NodeIdInUse(
                    f"{held}, still {record.state} after {loop.time() - began:.0f} s of waiting"
                )
            await self._pause(max(0.05, min(record.heartbeat_seconds / 2, left)))
        return False

    async def _pause(self, seconds: float) -> None:
        """``seconds``, or less if the worker is stopped meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    async def start(self) -> None:
        """Write the first record (a failure is logged; the loop tries again) and start beating.
        Nothing once stopped (a start racing the shutdown)."""
        if self._stop.is_set():
            return
        now = self._store.now()
        self._started_at = self._changed_at = now
        await self.beat()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="worker-presence")

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self._interval)
            if not self._stop.is_set():
                try:
                    await self.beat()
                except Exception:  # a bug, not an outage: log it, never stop beating silently
                    log.exception("worker %s: a registry beat failed", self._identity.node_id)

    def record(self, now: datetime) -> WorkerRecord:
        """The record as of ``now`` (the store's clock)."""
        life = self._interval * MISSED_BEATS + (self._grace if self._state is WorkerState.STOPPING else 0.0)
        identity = self._identity
        return WorkerRecord(
            node_id=identity.node_id,
            host=identity.host,
            pid=identity.pid,
            labels=dict(identity.labels),
            task_types=list(identity.task_types),
            queue_groups=list(identity.queue_groups),
            concurrency=self._capacity(),
            running=self._running(),
            version=identity.version,
            started_at=self._started_at or now,
            last_seen_at=now,
            heartbeat_seconds=self._interval,
            expires_at=now + timedelta(seconds=life),
            state=self._state,
            state_changed_at=self._changed_at or now,
        )

    async def beat(self) -> bool:
        """Write the record now (one write at a time, each bounded by ``FINAL_WRITE_SECONDS``);
        whether it was written."""
        async with self._writing:
            return await self._beat()

    async def _beat(self) -> bool:
        now = self._store.now()
        record = self.record(now)
        try:
            async with asyncio.timeout(FINAL_WRITE_SECONDS):
                previous = await self._store.beat_worker(record)
        except (StoreError, TimeoutError) as exc:
            if not self._failing:
                log.warning(
                    "cannot write worker %s's registry record (%s); trying again every %.0fs",
                    record.node_id,
                    exc,
                    self._interval,
                )
            self._failing = True
            return False
        if self._failing:
            log.info("worker %s's registry record is written again", record.node_id)
            self._failing = False
        self.beats += 1
        if previous is not None and previous is not record.state and record.state is WorkerState.ONLINE:
            # Back after the sweep marked it offline (or a node id reused after a clean stop): the
            # record says since when it is online.
            self._changed_at = now
            record = record.model_copy(update={"state_changed_at": now})
            with contextlib.suppress(StoreError, TimeoutError):
                async with asyncio.timeout(FINAL_WRITE_SECONDS):
                    await self._store.beat_worker(record)
        if record.state is WorkerState.ONLINE and previous in (
            None,
            WorkerState.OFFLINE,
            WorkerState.STOPPED,
        ):
            log.info(
                "worker %s on %s is online (%s)",
                record.node_id,
                record.host,
                "registered" if previous is None else f"was {previous}",
            )
            await self._transition(record, previous)
        return True

    async def stopping(self, grace: float) -> None:
        """Say the worker is draining: present ``grace`` seconds longer than a beat keeps it.
        Nothing when it never started."""
        if self._started_at is None:
            return
        self._grace = max(0.0, grace)
        self._state = WorkerState.STOPPING
        self._changed_at = self._store.now()
        await self.beat()

    async def stop(self) -> None:
        """Stop beating and write ``stopped`` (bounded by ``FINAL_WRITE_SECONDS``). Nothing when it
        never started."""
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await task  # its beat is bounded: the loop ends within FINAL_WRITE_SECONDS
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # stop() itself was cancelled
            except Exception:
                log.exception("worker %s: the registry loop ended with an error", self._identity.node_id)
        if self._started_at is None:
            return
        self._state = WorkerState.STOPPED
        self._changed_at = self._store.now()
        written = await self.beat()
        if written:
            await self._transition(self.record(self._store.now()), WorkerState.STOPPING)
        else:
            log.warning(
                "worker %s could not write 'stopped' to the registry: the sweep will mark it offline",
                self._identity.node_id,
            )

    async def _transition(self, record: WorkerRecord, previous: WorkerState | None) -> None:
        if self._metrics is not None:
            self._metrics.worker_transitions.labels(str(record.state)).inc()
        if self._on_transition is not None:
            try:
                await self._on_transition(record, previous)
            except Exception:
                log.exception("announcing worker %s %s failed", record.node_id, record.state)


class FleetSweep:
    """What every process with the reaper does for the registry: marks workers that stopped
    beating ``offline`` (each transition found by exactly one process, which logs, counts and
    announces it) and, once per retention pass, deletes the records of workers stopped or offline
    for longer than ``retention_seconds`` (None or 0 keeps them)."""

    def __init__(
        self,
        store: PresenceStore,
        *,
        retention_seconds: float | None,
        metrics: Metrics | None = None,
        on_transition: OnTransition | None = None,
        batch: int = 100,
    ) -> None:
        self._store = store
        self._retention = retention_seconds or None
        self._metrics = metrics
        self._on_transition = on_transition
        self._batch = batch

    async def sweep(self) -> int:
        """Mark the silent workers offline; how many this call marked."""
        now = self._store.now()
        moved = await self._store.sweep_offline_workers(now=now, limit=self._batch)
        for record in moved:
            silent = (now - record.last_seen_at).total_seconds()
            log.warning(
                "worker %s on %s (pid %d) is offline: no heartbeat for %.1fs (every %gs expected), "
                "%d attempt(s) running at its last beat",
                record.node_id,
                record.host,
                record.pid,
                silent,
                record.heartbeat_seconds,
                record.running,
            )
            if self._metrics is not None:
                self._metrics.worker_transitions.labels(str(WorkerState.OFFLINE)).inc()
            if self._on_transition is not None:
                try:
                    await self._on_transition(record, WorkerState.ONLINE)
                except Exception:
                    log.exception("announcing worker %s offline failed", record.node_id)
        return len(moved)

    async def prune(self) -> int:
        """Delete long-gone workers' records; how many."""
        if self._retention is None:
            return 0
        before = self._store.now() - timedelta(seconds=self._retention)
        pruned = await self._store.prune_workers(before=before)
        if pruned:
            log.info("deleted %d record(s) of workers gone for over %.0fs", pruned, self._retention)
        return pruned
