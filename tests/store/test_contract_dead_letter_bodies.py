"""Dead-letter records hold any message: bodies as bytes (NUL, not UTF-8, over the size bound),
NUL and lone surrogates anywhere else — stored on every backend, read back as they were."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import bson

from taskplatform.deadletters.capture import dead_letter_from
from taskplatform.models import AuditEntry, DeadLetter, DeathRecord, ErrorInfo
from taskplatform.models.dead_letter import MAX_BODY_BYTES
from taskplatform.store import BaseTaskStore
from taskplatform.store.deadletters import UpsertOutcome
from taskplatform.store.mongo import MongoTaskStore
from tests.store.helpers import make_dead_letter


def incoming(body: bytes, headers: dict[str, Any] | None = None, **properties: Any) -> Any:
    """A dead message as aio-pika hands it over (what capture reads of it)."""
    fields: dict[str, Any] = {
        "body": body,
        "headers": headers or {},
        "exchange": "tasks.dlx.exchange",
        "routing_key": "test_noop",
        "content_type": "application/octet-stream",
        "content_encoding": None,
        "message_id": "m-1",
        "correlation_id": None,
        "type": None,
        "app_id": None,
        "timestamp": None,
        "delivery_mode": 2,
        "priority": None,
    }
    fields.update(properties)
    return SimpleNamespace(**fields)


async def stored(store: BaseTaskStore, record: DeadLetter) -> DeadLetter:
    """Upsert ``record`` and read it back (on MongoDB also checking the document is BSON)."""
    await store.upsert_dead_letter(record)
    got = await store.get_dead_letter(record.id)
    assert got is not None
    if isinstance(store, MongoTaskStore):  # what a server would have to accept
        doc = await store._collection_named("dead_letters").find_one({"_id": record.id})
        assert isinstance(doc["body"], bytes)
        bson.encode(doc)
    return got


async def test_a_body_with_nul_bytes_is_stored_and_read_back_byte_for_byte(store: BaseTaskStore) -> None:
    raw = b'{"task_id": "t1"}\x00\x00 and text after the NULs'
    record = dead_letter_from(incoming(raw, {"x-task-id": "t1", "x-dead-reason": "bad-json"}), None)
    got = await stored(store, record)
    assert got.body_bytes() == raw and got.body_encoding == "utf-8" and got.body == raw.decode()
    assert (got.body_size, got.body_sha256, got.body_truncated) == (
        len(raw),
        hashlib.sha256(raw).hexdigest(),
        False,
    )
    assert got.properties["content_type"] == "application/octet-stream"
    # a malformed message naming a task is a record of its own, linked to that task
    assert got.kind == "message" and got.id != "t1" and got.task_id == "t1"


async def test_a_body_that_is_not_utf8_is_kept_as_base64(store: BaseTaskStore) -> None:
    raw = bytes(range(256)) * 3
    got = await stored(store, dead_letter_from(incoming(raw, {"x-task-id": "t2"}), None))
    assert got.body_encoding == "base64" and base64.b64decode(got.body) == raw and got.body_bytes() == raw


async def test_a_body_over_the_bound_keeps_its_beginning_its_size_and_its_sha256(
    store: BaseTaskStore,
) -> None:
    # a three-byte character straddles the bound: the kept beginning stays valid text
    raw = b"a" * (MAX_BODY_BYTES - 1) + "€".encode() + b"tail" * 1000
    got = await stored(store, dead_letter_from(incoming(raw), None))
    assert got.body_truncated and got.body_size == len(raw)
    assert got.body_sha256 == hashlib.sha256(raw).hexdigest()
    assert got.body_encoding == "utf-8" and got.body_bytes() == b"a" * (MAX_BODY_BYTES - 1)
    binary = b"\xff" * (MAX_BODY_BYTES + 10)
    cut = await stored(store, dead_letter_from(incoming(binary, routing_key="other"), None))
    assert cut.body_truncated and cut.body_size == len(binary) and cut.body_bytes() == binary[:MAX_BODY_BYTES]


async def test_nul_and_lone_surrogates_in_headers_and_fields_are_stored(store: BaseTaskStore) -> None:
    headers = {
        "x-task-id": "t3\x00",
        "x-task-type": "test\x00noop",
        "x-dead-reason": "bad\x00json",
        "x-dead-detail": "detail \x00 with NUL",
        "x-note": "a\x00b",
        "x-bytes": b"c\x00d",
        "x-lone": "e\ud800f",
        "key\x00with NUL": 1,
        "x-death": [
            {
                "reason": "rejected",
                "queue": "q\x00",
                "count": 2**70,  # kept within a 32-bit column
                "routing-keys": [b"rk\x00"],
                "time": datetime(2026, 1, 1, tzinfo=UTC),
            }
        ],
    }
    got = await stored(store, dead_letter_from(incoming(b"x", headers), None))
    # header values keep their exact bytes (base64), keys and fields their escapes
    assert got.headers["x-note"] == {"base64": base64.b64encode(b"a\x00b").decode()}
    assert got.headers["x-bytes"] == {"base64": base64.b64encode(b"c\x00d").decode()}
    assert got.headers["x-lone"] == {
        "base64": base64.b64encode("e\ud800f".encode("utf-8", "surrogatepass")).decode()
    }
    assert got.headers["key\\u0000with NUL"] == 1
    assert got.task_id == "t3\\u0000" and got.task_type == "test\\u0000noop"
    assert got.reason == "bad\\u0000json" and got.error_info is not None
    assert got.error_info.message == "detail \\u0000 with NUL"
    death = got.x_death[0]
    assert (death.queue, death.routing_keys, death.count) == ("q\\u0000", ["rk\\u0000"], 2**31 - 1)


async def test_the_store_escapes_what_any_writer_gives_it(store: BaseTaskStore) -> None:
    record = make_dead_letter(
        task_type="type\x00",
        reason="r" * 500,
        error_info=ErrorInfo(type="Boom\ud800", message="m\x00", traceback="tb\x00"),
        headers={"h": "v\x00", "nested": {"k\x00": ["\udfff"]}},
        properties={"message_id": "id\x00"},
        x_death=[DeathRecord(reason="rejected\x00", exchange="x\x00")],
        body="text with a lone \ud800 surrogate",
        body_encoding="utf-8",
    )
    got = await stored(store, record)
    assert got.task_type == "type\\u0000" and got.reason == "r" * 199 + "…"
    assert got.error_info is not None
    assert (got.error_info.type, got.error_info.message, got.error_info.traceback) == (
        "Boom\\ud800",
        "m\\u0000",
        "tb\\u0000",
    )
    assert got.headers == {"h": "v\\u0000", "nested": {"k\\u0000": ["\\udfff"]}}
    assert got.properties["message_id"] == "id\\u0000"
    assert (got.x_death[0].reason, got.x_death[0].exchange) == ("rejected\\u0000", "x\\u0000")
    # a text body that is no valid UTF-8 is kept as its bytes, in base64
    assert got.body_encoding == "base64"
    assert got.body_bytes() == "text with a lone \ud800 surrogate".encode("utf-8", "surrogatepass")
    again, _ = await store.upsert_dead_letter(record)  # the same record again finds it
    assert again.id == record.id and again.times_seen == 2


async def test_a_redelivered_malformed_message_finds_its_own_record(store: BaseTaskStore) -> None:
    # the quorum queue counts redeliveries in x-delivery-count; a death adds to x-death
    first = {"x-task-id": "t4", "x-dead-reason": "bad-json"}
    again = {**first, "x-delivery-count": 1, "x-death": [{"reason": "rejected", "count": 1}]}
    record = dead_letter_from(incoming(b"{oops", first), None)
    await store.upsert_dead_letter(record)
    redelivered = dead_letter_from(incoming(b"{oops", again), None)
    assert redelivered.id == record.id
    after, outcome = await store.upsert_dead_letter(redelivered)
    assert outcome is UpsertOutcome.DUPLICATE and after.times_seen == 2
    other = dead_letter_from(incoming(b"{oops!", first), None)  # another message: its own record
    assert other.id != record.id


async def test_an_audit_entry_with_nul_in_its_outcome_and_filter_is_stored(store: BaseTaskStore) -> None:
    entry = AuditEntry(
        actor="ops",
        action="bulk_replay",
        filter={"task_type": "t\x00"},
        outcome="refused: invalid parameters: unknown task type 'x\x00'",
    )
    await store.add_audit(entry)
    page = await store.list_audit(limit=10)
    got = next(e for e in page.items if e.id == entry.id)
    assert got.filter == {"task_type": "t\\u0000"}
    assert got.outcome == "refused: invalid parameters: unknown task type 'x\\u0000'"
