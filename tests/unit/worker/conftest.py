"""The worker's parts over fakes: the in-memory store behind a switch that plays an
outage, the real event bus and state aggregator, and the broker side faked
(``taskplatform.testing.broker``). Nothing here connects to RabbitMQ."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from taskplatform.errors import PermanentFailure, StoreError
from taskplatform.events.aggregator import StateAggregator
from taskplatform.events.bus import EventBus
from taskplatform.models import BackgroundTask
from taskplatform.retry import RetryPolicy
from taskplatform.store import BaseTaskStore, create_store
from taskplatform.tasks.executable import BackgroundTaskExecutable, TaskContext
from taskplatform.tasks.registry import ExecutableRegistry
from taskplatform.testing.broker import FakePublisher
from taskplatform.worker.config import WorkerConfig
from taskplatform.worker.recording import EventRecorder
from taskplatform.worker.settlement import Settler

NODE = "worker-1"

MakeTask = Callable[..., Awaitable[BackgroundTask]]


class Params(BaseModel):
    value: int = 0
    sleep: float = 0.0


class Result(BaseModel):
    value: int


class Echo(BackgroundTaskExecutable[Params, Result]):
    """Returns its input after ``sleep`` seconds; counts its runs."""

    task_type = "unit_echo"
    runs: ClassVar[list[str]] = []

    async def execute(self, ctx: TaskContext[Params]) -> Result:
        type(self).runs.append(ctx.task_id)
        await asyncio.sleep(ctx.parameters.sleep)
        return Result(value=ctx.parameters.value)


class Transient(Exception):
    """Declared retryable by Wobbly."""


class Wobbly(BackgroundTaskExecutable[Params, Result]):
    """Always fails with a retryable error."""

    task_type = "unit_wobbly"
    retryable_exceptions = (Transient,)
    retry_policy = RetryPolicy(max_attempts=3, initial_delay=5.0, jitter=0.0)

    async def execute(self, ctx: TaskContext[Params]) -> Result:
        raise Transient("the service said 503")


class Broken(BackgroundTaskExecutable[Params, Result]):
    """Fails for good."""

    task_type = "unit_broken"

    async def execute(self, ctx: TaskContext[Params]) -> Result:
        raise PermanentFailure("value must not be negative")


class Sleepy(BackgroundTaskExecutable[Params, Result]):
    """Sleeps past its own timeout."""

    task_type = "unit_sleepy"
    timeout = 0.1

    async def execute(self, ctx: TaskContext[Params]) -> Result:
        await asyncio.sleep(30)
        return Result(value=0)


class Polite(BackgroundTaskExecutable[Params, Result]):
    """Runs until asked to stop, then raises (a cooperative cancellation)."""

    task_type = "unit_polite"

    async def execute(self, ctx: TaskContext[Params]) -> Result:
        while not ctx.cancelled:
            await asyncio.sleep(0.01)
        raise RuntimeError("stopped as asked")


EXECUTABLES = (Echo, Wobbly, Broken, Sleepy, Polite)


class SwitchableStore:
    """A real store that can play an outage: while ``down``, every call raises StoreError and it
    does not answer a ping. A method named in ``refused`` fails while the store answers; one
    named in ``lose_reply`` does its work, then fails once, as a reply lost on the way back."""

    def __init__(self, store: BaseTaskStore) -> None:
        self._store = store
        self.down = False
        self.refused: set[str] = set()
        self.lose_reply: set[str] = set()
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not asyncio.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            if self.down or name in self.refused:
                raise StoreError(f"{name}: store unavailable (test outage)")
            answer = await attr(*args, **kwargs)
            if name in self.lose_reply:
                self.lose_reply.discard(name)
                raise StoreError(f"{name}: the connection dropped before the reply (test)")
            return answer

        return call

    async def answers(self) -> bool:
        return not self.down


@pytest.fixture(autouse=True)
def _forget_runs() -> None:
    Echo.runs.clear()


@pytest.fixture
async def real_store() -> AsyncIterator[BaseTaskStore]:
    store = create_store("memory://")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def store(real_store: BaseTaskStore) -> Any:
    """The store every part uses; ``store.down = True`` is an outage."""
    return SwitchableStore(real_store)


@pytest.fixture
async def bus(store: Any) -> AsyncIterator[EventBus]:
    bus = EventBus()
    StateAggregator(store, bus, node_id=NODE).attach()
    bus.start()
    try:
        yield bus
    finally:
        await bus.close()


@pytest.fixture
def config() -> WorkerConfig:
    return WorkerConfig(
        node_id=NODE,
        prefetch=2,
        default_timeout=5.0,
        lease_seconds=30.0,
        dead_letter_exchange="dlx",
        store_backoff=0.01,
        store_hold=0.3,
        cancel_poll=0.02,
        cancel_grace=0.2,
        progress_interval=0.0,
        priority_hold=5.0,
    )


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
def settler(store: Any, bus: EventBus, publisher: FakePublisher, config: WorkerConfig) -> Settler:
    recorder = EventRecorder(store, bus, node_id=config.node_id, store_hold=config.store_hold)
    return Settler(recorder, publisher, config)  # type: ignore[arg-type]


@pytest.fixture
def registry() -> ExecutableRegistry:
    return ExecutableRegistry(EXECUTABLES)


@pytest.fixture
def new_task(store: Any) -> MakeTask:
    """Store a QUEUED task of ``task_type`` (default: the echo task)."""

    async def make(task_type: str = Echo.task_type, **params: Any) -> BackgroundTask:
        task = BackgroundTask(task_type=task_type, parameters=params)
        await store.create(task)
        return task

    return make


@pytest.fixture
def claimed(
    store: Any, new_task: Callable[..., Awaitable[BackgroundTask]]
) -> Callable[..., Awaitable[BackgroundTask]]:
    """Store a task of ``task_type`` and claim its first attempt for this node (lease: 30 s)."""

    async def make(task_type: str = Echo.task_type, **params: Any) -> BackgroundTask:
        task = await new_task(task_type, **params)
        lease = store.now() + timedelta(seconds=30)
        running: BackgroundTask | None = await store.try_set_running(
            task.id, attempt=0, node_id=NODE, lease_until=lease
        )
        assert running is not None
        return running

    return make
