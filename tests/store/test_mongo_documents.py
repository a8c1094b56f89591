"""MongoDB specifics: documents written before a field existed, and the roll-up ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest

from taskplatform.models import TaskStatus, utcnow
from taskplatform.store.mongo import MongoTaskStore
from taskplatform.store.mongo.deadletters import DEAD_LETTERS
from taskplatform.store.mongo.part import LEDGER
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
