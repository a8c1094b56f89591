"""The DeadLetter API against real RabbitMQ: capture, list, replay, bulk replay, discard, audit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import httpx
import pytest

from taskplatform.models import TaskStatus
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.submission import SubmitRequest
from taskplatform.tasks.registry import ExecutableRegistry
from tests.api.tokens import SECRET, bearer, token
from tests.support.api import client_of, served
from tests.support.executables import Picky
from tests.support.runtime import eventually, running

pytestmark = pytest.mark.integration

AUTH = bearer(token("alice", "operator"))  # the audit log names the token's subject


@pytest.fixture
async def api(
    make_settings: Callable[..., PlatformSettings], registry: ExecutableRegistry, rabbitmq: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    """API (JWT authentication), worker and DLQ consumer in one process; the client is an operator."""
    settings = make_settings(auth="jwt", jwt_secret=SECRET, dlq_replay_rate=5.0, prefetch=64)
    runtime = Runtime(settings, role="dev", registry=registry, consume=True, relay=True)
    Picky.failing = False
    async with served(runtime) as app, client_of(app, headers=AUTH) as client:
        yield client, runtime
    Picky.failing = False


async def _submit(runtime: Runtime, task_type: str, **parameters: Any) -> str:
    submitted = await runtime.submitter.submit(SubmitRequest(task_type=task_type, parameters=parameters))
    return submitted.task.id


async def _pending(client: httpx.AsyncClient, n: int, **filters: Any) -> dict[str, Any]:
    async def enough() -> bool:
        r = await client.get("/api/v1/dead-letters", params={"limit": 100, **filters})
        return r.status_code == 200 and len(r.json()["items"]) >= n

    await eventually(enough, timeout=30)
    body: dict[str, Any] = (await client.get("/api/v1/dead-letters", params={"limit": 100, **filters})).json()
    return body


async def _status(runtime: Runtime, task_id: str) -> TaskStatus | None:
    task = await runtime.store.get(task_id)
    return task.status if task else None


async def test_twenty_dead_letters_for_three_reasons_are_listed_with_counts_x_death_and_errors(
    api: tuple[httpx.AsyncClient, Runtime], rabbitmq: Any
) -> None:
    client, runtime = api
    booms = [await _submit(runtime, "test_boom", value=i) for i in range(8)]
    slow = [await _submit(runtime, "test_slow", sleep=5) for _ in range(6)]  # times out twice
    channel = await rabbitmq.channel()
    exchange = await channel.get_exchange(runtime.topology.work_exchange)
    for i in range(6):
        headers = {"x-task-id": f"broken-{i}", "x-task-type": "test_noop"}
        await exchange.publish(aio_pika.Message(b"{not json", headers=headers), routing_key="test_noop")
    await channel.close()

    body = await _pending(client, 20)
    records = body["items"]
    assert len(records) == 20 and body["counts"]["total"] == 20
    assert body["counts"]["by_reason"] == {"non-retryable": 8, "attempts-exhausted": 6, "bad-json": 6}
    assert body["counts"]["by_task_type"] == {"test_boom": 8, "test_slow": 6, "test_noop": 6}
    by_id = {r["id"]: r for r in records}
    for task_id in booms:
        record = by_id[task_id]
        assert record["x_death"][0]["reason"] == "rejected" and record["x_death"][0]["source"] == "broker"
        assert record["error_type"] == "ValueError" and record["error_info"]["message"].startswith("boom")
        assert record["status"] == "pending" and record["deaths"] == 1
    for task_id in slow:
        assert by_id[task_id]["error_type"] == "TimeoutError"
        assert await _status(runtime, task_id) is TaskStatus.DEAD_LETTER
    # a malformed message is a message-level dead letter: a record of its own, linked to the id it names
    by_task = {r["task_id"]: r for r in records}
    broken = by_task["broken-3"]
    assert broken["kind"] == "message" and broken["id"].startswith("msg-")
    assert broken["x_death"][0] == {**broken["x_death"][0], "source": "platform", "reason": "bad-json"}
    assert broken["body"] == "{not json" and broken["headers"]["x-task-id"] == "broken-3"
    assert broken["error_info"]["type"] == "DeadLetter"
    assert all(by_id[i]["kind"] == "task" for i in booms + slow)

    one = await client.get(f"/api/v1/dead-letters/{booms[0]}")
    assert one.status_code == 200 and one.json()["task_id"] == booms[0]
    assert (await client.get("/api/v1/dead-letters/no-such-record")).status_code == 404
    filtered = await client.get("/api/v1/dead-letters", params={"reason": "bad-json"})
    assert len(filtered.json()["items"]) == 6
    assert (await runtime.store.count_dead_letters()).total == 20  # nothing stored twice


async def test_the_api_refuses_requests_without_a_token_and_submitters(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _runtime = api
    r = await client.get("/api/v1/dead-letters", headers={"Authorization": ""})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"] == 'Bearer realm="taskplatform"'
    r = await client.get("/api/v1/dead-letters", headers=bearer(token("bob", "submitter")))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert (await client.get("/api/v1/dead-letters")).status_code == 200  # the operator's token


async def test_replay_with_corrected_parameters_completes_the_task_and_is_audited(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    task_id = await _submit(runtime, "test_picky", value=-1)
    await _pending(client, 1, task_type="test_picky")

    bad = await client.post(f"/api/v1/dead-letters/{task_id}/replay", json={"parameters": {"value": "x"}})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_parameters"
    assert await _status(runtime, task_id) is TaskStatus.DEAD_LETTER  # nothing changed

    r = await client.post(f"/api/v1/dead-letters/{task_id}/replay", json={"parameters": {"value": 5}})
    assert r.status_code == 200, r.text
    assert r.json()["dead_letter"]["status"] == "replayed" and r.json()["task_status"] == "QUEUED"

    async def completed() -> bool:
        return await _status(runtime, task_id) is TaskStatus.COMPLETED

    await eventually(completed, timeout=15)
    task = await runtime.store.get(task_id)
    assert task is not None and task.result == {"value": 5} and task.retry_count == 0 and task.replays == 1
    audit = (await client.get("/api/v1/dead-letters/audit", params={"dead_letter_id": task_id})).json()[
        "items"
    ]
    replays = [a for a in audit if a["action"] == "replay" and a["outcome"] == "ok"]
    assert len(replays) == 1 and replays[0]["actor"] == "alice" and replays[0]["parameters_overridden"]


async def test_bulk_replay_dry_run_changes_nothing_and_the_real_one_keeps_to_the_rate(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    Picky.failing = True
    ids = [await _submit(runtime, "test_picky", value=i) for i in range(10)]
    await _pending(client, 10, task_type="test_picky")
    Picky.failing = False  # the downstream service is back

    dry = await client.post("/api/v1/dead-letters/replay", json={"task_type": "test_picky", "dry_run": True})
    assert dry.status_code == 200 and sorted(dry.json()["matched"]) == sorted(ids)
    assert dry.json()["replayed"] == []
    assert all([await _status(runtime, i) is TaskStatus.DEAD_LETTER for i in ids])
    assert (await runtime.store.count_dead_letters()).total == 10

    # a pace that would hold the request for longer than 600 s is refused before anything happens
    slow = await client.post(
        "/api/v1/dead-letters/replay", json={"task_type": "test_picky", "rate": 0.5, "limit": 1000}
    )
    assert slow.status_code == 422 and "within 600s" in slow.json()["error"]["message"]
    assert (await runtime.store.count_dead_letters()).total == 10
    r = await client.post(
        "/api/v1/dead-letters/replay", json={"task_type": "test_picky", "rate": 5}, timeout=30
    )
    assert r.status_code == 200 and sorted(r.json()["replayed"]) == sorted(ids) and r.json()["failed"] == {}

    async def all_completed() -> bool:
        return all([await _status(runtime, i) is TaskStatus.COMPLETED for i in ids])

    await eventually(all_completed, timeout=20)
    records = [await runtime.store.get_dead_letter(i) for i in ids]
    stamps = sorted(r.replayed_at for r in records if r is not None and r.replayed_at is not None)
    assert len(stamps) == 10
    spread = (stamps[-1] - stamps[0]).total_seconds()
    assert spread >= 9 / 5 * 0.9, spread  # 10 replays at 5/s take at least 1.8 s
    audit = (await client.get("/api/v1/dead-letters/audit")).json()["items"]
    # newest first: the replay, the refused one (audited too, with why), the dry run
    assert [(a["action"], a["dry_run"], a["outcome"].split(":")[0]) for a in audit[:3]] == [
        ("bulk_replay", False, "ok"),
        ("bulk_replay", False, "refused"),
        ("bulk_replay", True, "dry run"),
    ]
    refused = audit[1]
    assert "within 600s" in refused["outcome"] and refused["actor"] == "alice"
    assert refused["filter"] == {"task_type": "test_picky"} and refused["dead_letter_ids"] == []


async def test_replaying_twice_conflicts_unless_the_task_died_again_and_discard_ends_pending(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    Picky.failing = True
    again, gone = await _submit(runtime, "test_picky", value=1), await _submit(runtime, "test_picky", value=2)
    await _pending(client, 2, task_type="test_picky")

    assert (await client.post(f"/api/v1/dead-letters/{again}/replay")).status_code == 200
    second = await client.post(f"/api/v1/dead-letters/{again}/replay")
    assert second.status_code == 409 and "replayed already" in second.json()["error"]["message"]

    async def died_again() -> bool:  # still failing: the replayed task dies again
        record = await runtime.store.get_dead_letter(again)
        return record is not None and record.status.value == "pending" and record.deaths == 2

    await eventually(died_again, timeout=15)
    Picky.failing = False
    assert (await client.post(f"/api/v1/dead-letters/{again}/replay")).status_code == 200

    r = await client.delete(f"/api/v1/dead-letters/{gone}")
    assert r.status_code == 200 and r.json()["status"] == "discarded"
    pending = (await client.get("/api/v1/dead-letters", params={"task_type": "test_picky"})).json()
    assert gone not in {x["id"] for x in pending["items"]}
    discarded = (await client.get("/api/v1/dead-letters", params={"status": "discarded"})).json()
    assert [x["id"] for x in discarded["items"]] == [gone]
    assert (await client.delete(f"/api/v1/dead-letters/{gone}")).status_code == 409
    assert await _status(runtime, gone) is TaskStatus.DEAD_LETTER


async def _depth(rabbitmq: Any, queue_name: str) -> int:
    channel = await rabbitmq.channel()  # a fresh channel: a passive declare's counts are current
    try:
        queue = await channel.declare_queue(queue_name, passive=True)
        return int(queue.declaration_result.message_count)
    finally:
        await channel.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_worker_killed_while_storing_dead_letters_loses_none_and_duplicates_none(
    make_runtime: Callable[..., Runtime], rabbitmq: Any, request: pytest.FixtureRequest
) -> None:
    from tests.support.worker_process import start_worker

    store_url = request.getfixturevalue("own_postgres_database_url")
    api = make_runtime(role="api", consume=False, store_url=store_url)
    n = 3000
    async with running(api):
        channel = await rabbitmq.channel()
        for i in range(n):  # straight into the DLQ, as the dead-letter exchange would route them
            headers = {"x-task-id": f"dead-{i}", "x-dead-reason": "bad-json", "x-dead-detail": "not JSON"}
            await channel.default_exchange.publish(
                aio_pika.Message(f"body {i}".encode(), headers=headers),
                routing_key=api.topology.dead_letter_queue,
            )
        await channel.close()

        async def stored_some() -> bool:
            return (await api.store.count_dead_letters()).total >= 100

        victim = start_worker(api.settings, node_id="victim")
        try:
            await eventually(stored_some, timeout=60)
        finally:
            victim.kill()  # SIGKILL while it stores: its unacked dead letters go back to the DLQ
            victim.wait(timeout=10)
        at_kill = (await api.store.count_dead_letters()).total
        rescuer = start_worker(api.settings, node_id="rescuer")

        async def all_stored() -> bool:
            return (await api.store.count_dead_letters()).total >= n

        try:
            await eventually(all_stored, timeout=90)
            await asyncio.sleep(1)  # let the last acks land
            depth = await _depth(rabbitmq, api.topology.dead_letter_queue)
        finally:
            rescuer.terminate()
            rescuer.wait(timeout=30)
        counts = await api.store.count_dead_letters()
        seen = set()
        linked = set()
        cursor = None
        while True:
            page = await api.store.list_dead_letters(limit=500, cursor=cursor)
            seen.update(r.id for r in page.items)
            linked.update(r.task_id for r in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    assert at_kill < n, "the victim stored everything before it was killed; the test proved nothing"
    assert counts.total == n and len(seen) == n and depth == 0
    assert linked == {f"dead-{i}" for i in range(n)}  # each message's own record, none twice
