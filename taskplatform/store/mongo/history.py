"""The attempt history on MongoDB (a mixin of ``MongoTaskStore``): kept in the task's own
document, under ``attempt_log`` (its newest ``MAX_ATTEMPTS_KEPT``), so it goes with the task
however the task goes (a delete, or the retention TTL index). Task reads leave it out
(``MongoPart._to_task``)."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any

from taskplatform.models.attempt import MAX_ATTEMPTS_KEPT, AttemptRecord
from taskplatform.store.history import oldest_first, storable_attempt
from taskplatform.store.mongo.part import ATTEMPT_LOG, MongoPart, aware


class MongoAttemptHistory(MongoPart):
    """``add_attempts`` and ``list_attempts`` over the tasks collection."""

    async def add_attempts(self, records: Sequence[AttemptRecord]) -> None:
        async with self._errors():
            for record in records:
                doc = storable_attempt(record).model_dump(mode="python")
                doc["outcome"] = record.outcome.value
                # Only where this record is not there yet: a record written again changes nothing.
                await self.collection.update_one(
                    {"_id": record.task_id, f"{ATTEMPT_LOG}.id": {"$ne": record.id}},
                    {"$push": {ATTEMPT_LOG: {"$each": [doc], "$slice": -MAX_ATTEMPTS_KEPT}}},
                )

    async def list_attempts(
        self, task_id: str, *, limit: int = MAX_ATTEMPTS_KEPT
    ) -> builtins.list[AttemptRecord]:
        async with self._errors():
            doc = await self.collection.find_one({"_id": task_id}, {ATTEMPT_LOG: 1})
        kept: list[dict[str, Any]] = list((doc or {}).get(ATTEMPT_LOG) or [])
        records = []
        for item in kept:
            item = dict(item)
            for name in ("started_at", "ended_at"):
                item[name] = aware(item.get(name))
            records.append(AttemptRecord.model_validate(item))
        return oldest_first(records, limit)
