"""The DLQ consumer stores any dead message, and never loops on one it cannot store (real
RabbitMQ; SQLite and PostgreSQL).

Bodies are kept as bytes (NUL, not UTF-8, over the size bound) and round-trip through the
DeadLetter API; a record the store refuses for good is parked after a bounded number of tries,
counted, and can be moved back; a store outage parks nothing.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest

from taskplatform.cli.commands import build_parser
from taskplatform.cli.dlq import run_dlq
from taskplatform.deadletters.parking import HEADER_PARKED_ATTEMPTS, HEADER_PARKED_REASON
from taskplatform.errors import StoreError
from taskplatform.messaging.codec import encode
from taskplatform.models import (
    BackgroundTask,
    DeadLetter,
    OutboxState,
    OutboxStatus,
    TaskMessage,
    TaskStatus,
    utcnow,
)
from taskplatform.models.dead_letter import MAX_BODY_BYTES
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.store.deadletters import DeadLetterFilter, UpsertOutcome
from taskplatform.store.sql import SqlTaskStore
from taskplatform.tasks.registry import ExecutableRegistry
from tests.support.api import client_of, served
from tests.support.runtime import eventually, running

pytestmark = pytest.mark.integration


class FaultyStore(SqlTaskStore):
    """A real SQL store with faults injected into what the DLQ consumer does: records it
    refuses (``refuse``), and an outage (``down``: no ping, no dead-letter writes)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.refuse: Callable[[DeadLetter], bool] = lambda _record: False
        self.down = False
        self.failed_writes = 0

    async def ping(self) -> None:
        if self.down:
            raise StoreError("store operation failed: connection refused (injected outage)")
        await super().ping()

    async def upsert_dead_letter(self, record: DeadLetter) -> tuple[DeadLetter, UpsertOutcome]:
        if self.down:
            self.failed_writes += 1
            raise StoreError("store operation failed: connection refused (injected outage)")
        if self.refuse(record):
            self.failed_writes += 1
            raise StoreError("store operation failed: value refused by the database (injected)")
        return await super().upsert_dead_letter(record)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/capture.db"
    return str(request.getfixturevalue("postgres_database_url"))


@pytest.fixture
async def platform(
    make_settings: Callable[..., PlatformSettings],
    registry: ExecutableRegistry,
    rabbitmq: Any,
    store_url: str,
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime, FaultyStore]]:
    """API, worker and DLQ consumer on a FaultyStore (no faults unless a test injects them),
    three tries before parking, short backoff."""
    settings = make_settings(
        store_url=store_url,
        reaper_enabled=False,
        dlq_max_capture_attempts=3,
        dlq_capture_backoff_seconds=0.05,
    )
    store = FaultyStore(store_url)
    runtime = Runtime(settings, role="dev", registry=registry, store=store, consume=True, relay=True)
    async with served(runtime) as app, client_of(app, headers={"X-Operator": "ops"}) as client:
        yield client, runtime, store


def death(runtime: Runtime) -> dict[str, Any]:
    """The ``x-death`` RabbitMQ adds when the delivery limit dead-letters a message."""
    return {
        "x-death": [
            {
                "reason": "delivery_limit",
                "queue": runtime.topology.queue_for("test_noop"),
                "count": 1,
                "exchange": runtime.topology.work_exchange,
                "routing-keys": ["test_noop"],
                "time": datetime.now(UTC).replace(microsecond=0),
            }
        ]
    }


async def to_dlq(rabbitmq: Any, runtime: Runtime, message: aio_pika.Message) -> None:
    """Straight into the DLQ, as the dead-letter exchange would route it."""
    channel = await rabbitmq.channel()
    try:
        await channel.default_exchange.publish(message, routing_key=runtime.topology.dead_letter_queue)
    finally:
        await channel.close()


async def to_work_queue(rabbitmq: Any, runtime: Runtime, body: bytes, task_id: str) -> None:
    """A malformed message naming ``task_id``: a worker dead-letters it (bad-json)."""
    channel = await rabbitmq.channel()
    try:
        exchange = await channel.get_exchange(runtime.topology.work_exchange)
        headers = {"x-task-id": task_id, "x-task-type": "test_noop"}
        await exchange.publish(aio_pika.Message(body, headers=headers), routing_key="test_noop")
    finally:
        await channel.close()


async def depth(rabbitmq: Any, queue_name: str) -> int:
    channel = await rabbitmq.channel()  # a fresh channel: a passive declare's counts are current
    try:
        queue = await channel.declare_queue(queue_name, passive=True)
        return int(queue.declaration_result.message_count)
    finally:
        await channel.close()


async def api_record(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    """The one record naming ``task_id``, through the DeadLetter API."""
    found: list[dict[str, Any]] = []

    async def there() -> bool:
        r = await client.get("/api/v1/dead-letters", params={"task_id": task_id, "status": "any"})
        found[:] = r.json()["items"] if r.status_code == 200 else []
        return len(found) == 1

    await eventually(there, timeout=20)
    r = await client.get(f"/api/v1/dead-letters/{found[0]['id']}")
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


def body_of(record: dict[str, Any]) -> bytes:
    text: str = record["body"]
    return base64.b64decode(text) if record["body_encoding"] == "base64" else text.encode()


def waiting_task(**parameters: Any) -> BackgroundTask:
    """A task waiting for its message (the relay leaves it be; the test dead-letters it)."""
    return BackgroundTask(
        task_type="test_noop",
        parameters=parameters,
        outbox=OutboxState(status=OutboxStatus.PUBLISHED, published_at=utcnow()),
    )


async def _status(runtime: Runtime, task_id: str) -> TaskStatus | None:
    task = await runtime.store.get(task_id)
    return task.status if task else None


async def test_dead_messages_with_nul_non_utf8_and_oversized_bodies_round_trip_and_their_tasks_replay(
    platform: tuple[httpx.AsyncClient, Runtime, FaultyStore], rabbitmq: Any
) -> None:
    client, runtime, _store = platform
    # tasks whose own current message the delivery limit dead-lettered: one carrying a header
    # with a NUL, one whose body is over the bound
    with_nul_header = waiting_task(value=1)
    oversized = waiting_task(value=2, pad="x" * (MAX_BODY_BYTES + 5000))
    for task in (with_nul_header, oversized):
        await runtime.store.create(task)
    note = {"x-note": "a\x00b", **death(runtime)}
    await to_dlq(rabbitmq, runtime, encode(TaskMessage.for_task(with_nul_header), extra_headers=note))
    big = encode(TaskMessage.for_task(oversized), extra_headers=death(runtime))
    await to_dlq(rabbitmq, runtime, big)
    # malformed messages a worker dead-letters: a body with NULs, one that is not UTF-8
    nul_body = b'\x00{"task_id": "x"}\x00 NUL'
    binary_body = b"\xff\xfe\x00\x80 not UTF-8"
    named = {f"nul-{uuid.uuid4().hex}": nul_body, f"bin-{uuid.uuid4().hex}": binary_body}
    for task_id, body in named.items():
        await to_work_queue(rabbitmq, runtime, body, task_id)

    for task_id, body in named.items():
        record = await api_record(client, task_id)
        assert body_of(record) == body and record["kind"] == "message" and record["reason"] == "bad-json"
        assert record["body_size"] == len(body) and record["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert (await api_record(client, next(iter(named))))["body_encoding"] == "utf-8"  # text, NULs and all

    record = await api_record(client, with_nul_header.id)
    assert (
        record["id"] == with_nul_header.id
        and record["kind"] == "task"
        and record["reason"] == "delivery_limit"
    )
    assert record["headers"]["x-note"] == {"base64": base64.b64encode(b"a\x00b").decode()}
    assert body_of(record) == encode(TaskMessage.for_task(with_nul_header)).body

    record = await api_record(client, oversized.id)
    assert record["body_truncated"] and record["body_size"] == len(big.body) > MAX_BODY_BYTES
    assert record["body_sha256"] == hashlib.sha256(big.body).hexdigest()
    assert body_of(record) == big.body[:MAX_BODY_BYTES]

    for task in (with_nul_header, oversized):
        assert await _status(runtime, task.id) is TaskStatus.DEAD_LETTER
        r = await client.post(f"/api/v1/dead-letters/{task.id}/replay")
        assert r.status_code == 200, r.text

    async def both_completed() -> bool:
        return all(
            [await _status(runtime, t.id) is TaskStatus.COMPLETED for t in (with_nul_header, oversized)]
        )

    await eventually(both_completed, timeout=20)
    done = await runtime.store.get(oversized.id)
    assert done is not None and done.result == {"value": 2} and done.replays == 1
    assert await depth(rabbitmq, runtime.topology.parking_queue) == 0


def _parked(runtime: Runtime, reason: str) -> float:
    value = runtime.metrics.registry.get_sample_value(
        "taskplatform_dead_letters_parked_total", {"reason": reason}
    )
    return float(value) if value is not None else -1.0


async def test_a_record_the_store_refuses_for_good_is_parked_after_the_bound_counted_and_moved_back(
    platform: tuple[httpx.AsyncClient, Runtime, FaultyStore],
    rabbitmq: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _client, runtime, store = platform
    assert _parked(runtime, "store-refused") == 0 and _parked(runtime, "capture-failed") == 0
    refused_id = f"refused-{uuid.uuid4().hex}"
    store.refuse = lambda record: record.task_id == refused_id
    headers = {"x-task-id": refused_id, "x-dead-reason": "bad-json", "x-custom": "kept"}
    await to_dlq(rabbitmq, runtime, aio_pika.Message(b"the body \x00 as it was", headers=headers))

    async def parked() -> bool:
        return await depth(rabbitmq, runtime.topology.parking_queue) == 1

    await eventually(parked, timeout=20)
    assert await depth(rabbitmq, runtime.topology.dead_letter_queue) == 0  # acked: no loop
    assert store.failed_writes == 3  # TASKPLATFORM_DLQ_MAX_CAPTURE_ATTEMPTS
    assert _parked(runtime, "store-refused") == 1 and _parked(runtime, "capture-failed") == 0
    channel = await rabbitmq.channel()
    try:
        queue = await channel.declare_queue(runtime.topology.parking_queue, passive=True)
        message = await queue.get(no_ack=False)
        assert message.body == b"the body \x00 as it was"
        assert message.headers["x-custom"] == "kept" and message.headers["x-task-id"] == refused_id
        assert message.headers[HEADER_PARKED_REASON] == "store-refused"
        assert message.headers[HEADER_PARKED_ATTEMPTS] == 3
        await message.nack(requeue=True)
    finally:
        await channel.close()

    # the cause fixed, an operator moves it back: it is captured like any other
    store.refuse = lambda _record: False
    args = build_parser().parse_args(["dlq", "unpark"])
    assert await run_dlq(runtime.settings, args) == 0
    assert "moved 1 parked message(s)" in capsys.readouterr().out

    async def stored() -> bool:
        page = await runtime.store.list_dead_letters(DeadLetterFilter(task_id=refused_id))
        return len(page.items) == 1

    await eventually(stored, timeout=20)
    page = await runtime.store.list_dead_letters(DeadLetterFilter(task_id=refused_id))
    record = page.items[0]
    assert record.body_bytes() == b"the body \x00 as it was" and "x-parked-reason" not in record.headers
    assert await depth(rabbitmq, runtime.topology.parking_queue) == 0
    assert _parked(runtime, "store-refused") == 1


async def test_a_store_outage_parks_nothing_however_long_it_lasts(
    platform: tuple[httpx.AsyncClient, Runtime, FaultyStore], rabbitmq: Any
) -> None:
    _client, runtime, store = platform
    task_id = f"outage-{uuid.uuid4().hex}"
    store.down = True
    headers = {"x-task-id": task_id, "x-dead-reason": "bad-json"}
    await to_dlq(rabbitmq, runtime, aio_pika.Message(b"waits out the outage", headers=headers))

    async def tried_past_the_bound() -> bool:
        return store.failed_writes > 3 * 2  # well past DLQ_MAX_CAPTURE_ATTEMPTS

    await eventually(tried_past_the_bound, timeout=30)
    assert await depth(rabbitmq, runtime.topology.parking_queue) == 0
    store.down = False

    async def stored() -> bool:
        page = await runtime.store.list_dead_letters(DeadLetterFilter(task_id=task_id))
        return len(page.items) == 1

    await eventually(stored, timeout=40)
    assert await depth(rabbitmq, runtime.topology.parking_queue) == 0
    assert await depth(rabbitmq, runtime.topology.dead_letter_queue) == 0
    assert _parked(runtime, "store-refused") == 0 and _parked(runtime, "capture-failed") == 0


async def test_a_dead_letter_held_through_an_outage_longer_than_the_hold_goes_back_uncounted(
    make_settings: Callable[..., PlatformSettings],
    registry: ExecutableRegistry,
    rabbitmq: Any,
    tmp_path: Path,
) -> None:
    store_url = f"sqlite+aiosqlite:///{tmp_path}/handback.db"
    settings = make_settings(
        store_url=store_url,
        reaper_enabled=False,
        store_outage_hold_seconds=0.5,
        dlq_capture_backoff_seconds=0.05,
    )
    store = FaultyStore(store_url)
    runtime = Runtime(settings, role="worker", registry=registry, store=store, consume=True)
    task_id = f"held-{uuid.uuid4().hex}"
    async with running(runtime):
        store.down = True
        headers = {"x-task-id": task_id, "x-dead-reason": "bad-json"}
        await to_dlq(rabbitmq, runtime, aio_pika.Message(b"outlives the hold", headers=headers))
        assert runtime.dlq_consumer is not None

        async def handed_back_twice() -> bool:
            return runtime.dlq_consumer is not None and runtime.dlq_consumer.handed_back >= 2

        await eventually(handed_back_twice, timeout=20)
        store.down = False

        async def stored() -> bool:
            page = await runtime.store.list_dead_letters(DeadLetterFilter(task_id=task_id))
            return len(page.items) == 1

        await eventually(stored, timeout=20)
        record = (await runtime.store.list_dead_letters(DeadLetterFilter(task_id=task_id))).items[0]
        assert await depth(rabbitmq, runtime.topology.dead_letter_queue) == 0
    # Handed back as new messages, never requeued: the queue counted no delivery of it.
    assert "x-delivery-count" not in record.headers and record.times_seen == 1
    assert await depth(rabbitmq, runtime.topology.parking_queue) == 0
