"""MongoDB specifics: documents written before a field existed, the roll-up ledger, the TTL index,
a store not opened or whose server does not answer, and writers racing it."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.errors import BulkWriteError

from taskplatform.errors import DuplicateEntryError, StoreError
from taskplatform.models import AuditEntry, TaskStatus, utcnow
from taskplatform.models.attempt import AttemptOutcome, AttemptRecord
from taskplatform.store.mongo import MongoTaskStore
from taskplatform.store.mongo.deadletters import AUDIT, DEAD_LETTERS
from taskplatform.store.mongo.part import ATTEMPT_LOG, LEDGER, aware
from taskplatform.store.mongo.retention import RETENTION_INDEX
from tests.store.helpers import NODE, make_dead_letter, make_task
from tests.support.mongo_emulation import AsyncEmulatedDatabase

pytestmark = pytest.mark.mongodb


@pytest.fixture
async def mongo() -> AsyncIterator[MongoTaskStore]:
    store = MongoTaskStore("mongodb://emulated/taskplatform_test", database=AsyncEmulatedDatabase())
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_a_document_without_the_sub_task_fields_still_runs(mongo: MongoTaskStore) -> None:
    task = make_task()
    doc = MongoTaskStore._to_doc(task)
    del doc["awaiting_children"], doc["last_event_id"]  # as written before these fields existed
    await mongo.collection.insert_one(doc)
    lease = utcnow() + timedelta(seconds=30)
    assert await mongo.try_set_running(task.id, attempt=0, node_id=NODE, lease_until=lease) is not None
    assert await mongo.renew_lease(task.id, node_id=NODE, attempt=0, lease_until=lease) is not None
    assert await mongo.flag_cancel(task.id) is not None
    done = await mongo.record_completion(task.id, node_id=NODE, attempt=0, result={}, event_id="e-1")
    assert done is not None and done.status is TaskStatus.COMPLETED and done.last_event_id == "e-1"
    assert done.awaiting_children is False


async def test_the_ledger_is_kept_in_the_parent_document_but_not_in_the_model(mongo: MongoTaskStore) -> None:
    parent, child = make_task(), make_task()
    await mongo.create_many([parent, child])
    after = await mongo.apply_rollup(parent.id, child.id, TaskStatus.RUNNING, 2)
    assert after is not None and not hasattr(after, LEDGER)
    raw = await mongo.collection.find_one({"_id": parent.id})
    assert raw[LEDGER] == {child.id: {"b": "running", "v": 2}}
    assert raw["sub_task_status_summary"]["running"] == 1


async def test_a_dead_document_without_the_replays_field_can_be_replayed(mongo: MongoTaskStore) -> None:
    task = make_task(status=TaskStatus.DEAD_LETTER)
    doc = MongoTaskStore._to_doc(task)
    del doc["replays"]  # as written before replays existed
    await mongo.collection.insert_one(doc)
    got = await mongo.get(task.id)
    assert got is not None and got.replays == 0
    assert await mongo.replay_task(task.id, expected_replays=1) is None
    replayed = await mongo.replay_task(task.id, expected_replays=0)
    assert replayed is not None and replayed.replays == 1 and replayed.status is TaskStatus.QUEUED


async def test_dead_letter_times_are_dates_and_nested_values_keep_their_json_form(
    mongo: MongoTaskStore,
) -> None:
    record = make_dead_letter()
    await mongo.upsert_dead_letter(record)
    raw = await mongo._collection_named(DEAD_LETTERS).find_one({"_id": record.id})
    assert isinstance(raw["last_seen_at"], datetime) and isinstance(raw["first_seen_at"], datetime)
    assert raw["status"] == "pending" and raw["task_type"] == record.task_type
    assert isinstance(raw["error_info"]["occurred_at"], str)


async def test_retention_is_a_ttl_index_on_completed_at_kept_in_step_with_the_setting() -> None:
    database = AsyncEmulatedDatabase()

    async def indexes_after_open(retention: float | None) -> dict[str, object]:
        store = MongoTaskStore("mongodb://emulated/t", database=database, retention_seconds=retention)
        await store.open()
        try:
            info: dict[str, object] = await store.collection.index_information()
            return info
        finally:
            await store.close()

    created = await indexes_after_open(7 * 86400)
    assert created[RETENTION_INDEX] == {
        "key": [("completed_at", 1)],
        "expireAfterSeconds": 604800,
        "partialFilterExpression": {"status": {"$in": ["CANCELLED", "COMPLETED", "COMPLETED_WITH_ERRORS"]}},
        "v": 2,
    }
    changed = await indexes_after_open(3600)
    assert changed[RETENTION_INDEX]["expireAfterSeconds"] == 3600  # type: ignore[index]
    assert RETENTION_INDEX not in await indexes_after_open(None)
    # an index from before it covered only the statuses retention deletes is made again
    await database["tasks"].create_index([("completed_at", 1)], name=RETENTION_INDEX, expireAfterSeconds=60)
    remade = await indexes_after_open(0.5)  # and a fraction of a second rounds up, never down to 0
    assert (
        remade[RETENTION_INDEX]["partialFilterExpression"]
        == created[RETENTION_INDEX]["partialFilterExpression"]
    )  # type: ignore[index]
    assert remade[RETENTION_INDEX]["expireAfterSeconds"] == 1  # type: ignore[index]


async def test_reopening_with_the_same_retention_leaves_the_ttl_index_alone() -> None:
    database = AsyncEmulatedDatabase()
    for _ in range(2):
        store = MongoTaskStore("mongodb://emulated/t", database=database, retention_seconds=60)
        await store.open()
        info = await store.collection.index_information()
        await store.close()
        assert info[RETENTION_INDEX]["expireAfterSeconds"] == 60


async def test_a_dead_letter_written_with_a_text_body_still_reads(mongo: MongoTaskStore) -> None:
    record = make_dead_letter(body="text body")
    await mongo.upsert_dead_letter(record)
    dead_letters = mongo._collection_named(DEAD_LETTERS)
    # as written before bodies were kept as bytes (BSON binary)
    await dead_letters.update_one({"_id": record.id}, {"$set": {"body": "text body"}})
    got = await mongo.get_dead_letter(record.id)
    assert got is not None and got.body == "text body"


def test_a_date_without_a_zone_is_read_as_utc() -> None:
    naive = datetime(2026, 1, 2, 3, 4, 5)
    assert aware(naive) == naive.replace(tzinfo=UTC)
    assert aware("not a date") == "not a date"


async def test_a_store_not_opened_refuses_its_operations() -> None:
    store = MongoTaskStore("mongodb://127.0.0.1:1/never_opened")
    with pytest.raises(StoreError, match="not open"):
        await store.ping()
    with pytest.raises(StoreError, match="not open"):
        await store.get("t-1")
    with pytest.raises(StoreError, match="not open"):
        await store.get_dead_letter("t-1")
    assert await store.answers() is False


async def test_a_server_that_does_not_answer_fails_open_with_a_store_error() -> None:
    store = MongoTaskStore("mongodb://127.0.0.1:1/unreachable", server_selection_timeout_ms=100)
    with pytest.raises(StoreError, match="store operation failed"):
        await store.open()
    await store.close()  # releases the client it made; the next open makes another
    with pytest.raises(StoreError, match="not open"):
        await store.ping()
    # the driver may still drop a refused connection attempt after close: collect it here, so its
    # ResourceWarning is not raised in whichever test runs next
    await asyncio.sleep(0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


class RacingDatabase:
    """The emulated database with another writer getting in first on the tasks collection:
    ``lose_updates`` makes every find-and-modify find its guard changed; ``replay_before_delete``
    names tasks put back to QUEUED between the purge's find and its delete."""

    def __init__(self) -> None:
        self._db = AsyncEmulatedDatabase()
        self.lose_updates = False
        self.replay_before_delete: set[str] = set()

    def __getitem__(self, name: str) -> Any:
        return RacingCollection(self._db[name], self) if name == "tasks" else self._db[name]

    async def command(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await self._db.command(name, *args, **kwargs)


class RacingCollection:
    def __init__(self, inner: Any, races: RacingDatabase) -> None:
        self._inner = inner
        self._races = races

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def find_one_and_update(self, *args: Any, **kwargs: Any) -> Any:
        if self._races.lose_updates:
            return None
        return await self._inner.find_one_and_update(*args, **kwargs)

    async def delete_many(self, *args: Any, **kwargs: Any) -> Any:
        for task_id in self._races.replay_before_delete:
            await self._inner.update_one({"_id": task_id}, {"$set": {"status": "QUEUED"}})
        return await self._inner.delete_many(*args, **kwargs)


@pytest.fixture
async def racing() -> AsyncIterator[tuple[MongoTaskStore, RacingDatabase]]:
    database = RacingDatabase()
    store = MongoTaskStore("mongodb://emulated/racing", database=database)
    await store.open()
    try:
        yield store, database
    finally:
        await store.close()


async def test_a_roll_up_that_keeps_losing_races_gives_up_with_a_store_error(
    racing: tuple[MongoTaskStore, RacingDatabase],
) -> None:
    store, races = racing
    parent, child = make_task(), make_task()
    await store.create_many([parent, child])
    races.lose_updates = True
    with pytest.raises(StoreError, match="kept losing races"):
        await store.apply_rollup(parent.id, child.id, TaskStatus.QUEUED, 1)
    races.lose_updates = False
    got = await store.get(parent.id)
    assert got is not None and got.sub_task_status_summary is None


async def test_a_task_replayed_between_the_purges_find_and_delete_is_kept(
    racing: tuple[MongoTaskStore, RacingDatabase],
) -> None:
    store, races = racing
    ended = utcnow() - timedelta(hours=1)
    old, replayed = (make_task(status=TaskStatus.COMPLETED, completed_at=ended) for _ in range(2))
    await store.create_many([old, replayed])
    races.replay_before_delete = {replayed.id}

    assert await store.purge_finished(before=utcnow()) == 1

    assert await store.get(old.id) is None
    kept = await store.get(replayed.id)
    assert kept is not None and kept.status is TaskStatus.QUEUED


async def test_a_write_concern_failure_is_an_outage_and_takes_back_what_it_inserted(
    mongo: MongoTaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bulk write that failed for another reason than a duplicate (here a write concern) is a
    StoreError, not DuplicateTaskError; the documents it kept are taken back either way."""
    from pymongo.errors import BulkWriteError

    from taskplatform.errors import DuplicateTaskError

    tasks = [make_task(), make_task(), make_task()]
    real = mongo.collection

    class KeepsTwoThenFails:
        """The tasks collection, whose insert_many keeps two documents and then fails."""

        details: dict[str, Any] = {}

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        async def insert_many(self, docs: list[dict[str, Any]], ordered: bool = True) -> Any:
            await real.insert_many(docs[:2], ordered=ordered)
            raise BulkWriteError({"nInserted": 2, **self.details})

    failing = KeepsTwoThenFails()
    monkeypatch.setattr(MongoTaskStore, "collection", property(lambda self: failing))

    async def kept_two_then(details: dict[str, Any]) -> None:
        failing.details = details

    concern = {"writeErrors": [], "writeConcernErrors": [{"code": 64, "errmsg": "waiting for replication"}]}
    await kept_two_then(concern)
    with pytest.raises(StoreError) as raised:
        await mongo.create_many(tasks)
    assert not isinstance(raised.value, DuplicateTaskError)
    assert [await mongo.get(t.id) for t in tasks] == [None, None, None]
    duplicate = {"writeErrors": [{"index": 2, "code": 11000, "errmsg": "E11000 duplicate key"}]}
    await kept_two_then(duplicate)
    with pytest.raises(DuplicateTaskError):
        await mongo.create_many(tasks)
    assert [await mongo.get(t.id) for t in tasks] == [None, None, None]


async def test_a_full_connection_pool_is_a_store_error_naming_the_budget(
    mongo: MongoTaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pymongo.errors import WaitQueueTimeoutError

    real = mongo.collection

    class PoolFull:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        async def find_one(self, *args: Any, **kwargs: Any) -> Any:
            raise WaitQueueTimeoutError("timed out while checking out a connection from connection pool")

    full = PoolFull()
    monkeypatch.setattr(MongoTaskStore, "collection", property(lambda self: full))
    with pytest.raises(StoreError) as raised:
        await mongo.get("some-task")
    assert "TASKPLATFORM_STORE_MAX_CONNECTIONS" in str(raised.value)
    assert f"all {mongo.max_connections} are busy" in str(raised.value)


async def test_when_taking_back_a_failed_batch_fails_too_the_batchs_error_stands_and_the_log_names_the_kept(
    mongo: MongoTaskStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The outage outlasts the insert: the documents kept stay (queued, as submitted), the caller
    still gets the insert's own error (a duplicate stays DuplicateTaskError, so a submitter retries
    one by one and finds them as its own) and the error log lists them."""
    from pymongo.errors import AutoReconnect, BulkWriteError

    from taskplatform.errors import DuplicateTaskError

    tasks = [make_task(), make_task(), make_task()]
    real = mongo.collection

    class KeepsTwoThenFailsAndCannotDelete:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        async def insert_many(self, docs: list[dict[str, Any]], ordered: bool = True) -> Any:
            await real.insert_many(docs[:2], ordered=ordered)
            raise BulkWriteError(
                {"nInserted": 2, "writeErrors": [{"index": 2, "code": 11000, "errmsg": "E11000"}]}
            )

        async def delete_many(self, query: dict[str, Any]) -> Any:
            raise AutoReconnect("connection lost (test)")

    failing = KeepsTwoThenFailsAndCannotDelete()
    monkeypatch.setattr(MongoTaskStore, "collection", property(lambda self: failing))
    with caplog.at_level("ERROR", logger="taskplatform.store.mongo.store"), pytest.raises(DuplicateTaskError):
        await mongo.create_many(tasks)
    monkeypatch.undo()
    assert [(await mongo.get(t.id)) is not None for t in tasks] == [True, True, False]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert tasks[0].id in logged and tasks[1].id in logged and "taking them back failed" in logged


async def test_task_reads_leave_the_ledger_and_the_attempt_history_on_the_server(
    mongo: MongoTaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a parent with a ledger entry and attempt records, as a fan-out's parent has hundreds of each
    parent = make_task(user_id="u-1", idempotency_key="k-1")
    child = make_task()
    await mongo.create_many([parent, child])
    await mongo.apply_rollup(parent.id, child.id, TaskStatus.RUNNING, 2)
    record = AttemptRecord(
        id=f"{parent.id}-0",
        task_id=parent.id,
        generation=0,
        attempt=0,
        node_id=NODE,
        outcome=AttemptOutcome.FAILED,
    )
    await mongo.add_attempts([record])
    raw = await mongo.collection.find_one({"_id": parent.id})
    assert LEDGER in raw and ATTEMPT_LOG in raw  # stored with the task
    seen: list[set[str]] = []
    to_task = MongoTaskStore._to_task

    def spy(doc: Any) -> Any:
        seen.append(set(doc))
        return to_task(doc)

    monkeypatch.setattr(MongoTaskStore, "_to_task", staticmethod(spy))
    assert await mongo.get(parent.id) is not None
    assert await mongo.get_visible(parent.id, user_id="u-1") is not None
    assert (await mongo.list()).items
    assert await mongo.find_by_idempotency_key("u-1", "k-1") is not None
    assert await mongo.amend_queued(parent.id, priority=3) is not None  # a guarded update's answer
    claimed = await mongo.claim_pending_outbox(
        owner="relay", limit=10, lease_until=utcnow() + timedelta(seconds=30), created_before=utcnow()
    )
    assert parent.id in {t.id for t in claimed}
    lapsed = utcnow() - timedelta(seconds=5)
    assert await mongo.try_set_running(parent.id, attempt=0, node_id=NODE, lease_until=lapsed) is not None
    assert parent.id in {t.id for t in await mongo.list_lapsed(before=utcnow(), limit=10)}
    assert len(seen) >= 8
    assert all(not fields & {LEDGER, ATTEMPT_LOG} for fields in seen), seen
    assert [a.id for a in await mongo.list_attempts(parent.id)] == [record.id]  # still there


async def test_an_audit_insert_the_server_refuses_for_another_reason_is_not_a_duplicate(
    mongo: MongoTaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def too_large(self: Any, docs: Any, **kwargs: Any) -> Any:
        raise BulkWriteError({"writeErrors": [{"index": 0, "code": 10334, "errmsg": "BSONObjectTooLarge"}]})

    monkeypatch.setattr(type(mongo._collection_named(AUDIT)), "insert_many", too_large)  # noqa: SLF001
    with pytest.raises(StoreError, match="audit entries not stored") as refused:
        await mongo.add_audits([AuditEntry(actor="a", action="submit", outcome="ok")])
    assert not isinstance(refused.value, DuplicateEntryError)  # not taken for "already stored"
