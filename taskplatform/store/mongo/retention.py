"""Deleting finished tasks on MongoDB (a mixin of ``MongoTaskStore``).

Retention is a TTL index on ``completed_at`` covering the statuses retention deletes
(completed, with or without errors, cancelled; a partial index, MongoDB 6.0 or newer): the
server deletes each such task ``retention`` seconds after it finished, as the SQL stores'
cleanup pass does; dead and failed tasks stay for an operator. The same pass runs here too,
as a backstop for the server's TTL monitor (once a minute, and it may fall behind). A parent's
roll-up ledger lives in its own document, so it goes with the parent.
"""

from __future__ import annotations

import builtins
import logging
import math
from collections.abc import Sequence
from datetime import datetime

from pymongo import ASCENDING

from taskplatform.models import TERMINAL
from taskplatform.store.deletion import EXPIRING
from taskplatform.store.mongo.part import MongoPart

log = logging.getLogger(__name__)

RETENTION_INDEX = "ttl_completed"
_FINISHED = [s.value for s in TERMINAL]
_EXPIRING = sorted(s.value for s in EXPIRING)
#: The TTL index covers the statuses retention deletes (``$in`` in a partial index: MongoDB 6.0).
_PARTIAL = {"status": {"$in": _EXPIRING}}


class MongoRetention(MongoPart):
    """The TTL index, ``_delete_finished`` and ``_finished_before`` over the store's database."""

    #: Seconds a finished task is kept; None keeps them (no TTL index).
    retention_seconds: float | None = None

    async def _ensure_retention_index(self) -> None:
        """Create, change (``collMod``, no rebuild) or drop the TTL index to match the setting."""
        indexes = await self.collection.index_information()
        current = indexes.get(RETENTION_INDEX)
        if self.retention_seconds is None:
            if current is not None:
                await self.collection.drop_index(RETENTION_INDEX)
            return
        seconds = max(1, math.ceil(self.retention_seconds))
        if current is not None and current.get("partialFilterExpression") != _PARTIAL:
            # made before it covered only the statuses retention deletes: collMod cannot change that
            await self.collection.drop_index(RETENTION_INDEX)
            current = None
        if current is None:
            await self.collection.create_index(
                [("completed_at", ASCENDING)],
                name=RETENTION_INDEX,
                expireAfterSeconds=seconds,
                partialFilterExpression=_PARTIAL,
            )
        elif current.get("expireAfterSeconds") != seconds:
            log.info("retention of finished tasks changed to %ds; updating the TTL index", seconds)
            await self.database.command(
                "collMod",
                self.collection.name,
                index={"name": RETENTION_INDEX, "expireAfterSeconds": seconds},
            )

    async def _delete_finished(self, task_ids: Sequence[str]) -> builtins.list[str]:
        if not task_ids:
            return []
        query = {"_id": {"$in": list(task_ids)}, "status": {"$in": _FINISHED}}
        async with self._errors():
            found = await self.collection.find(query, {"_id": 1}).to_list(None)
            ids = [doc["_id"] for doc in found]
            # The delete checks the status again: a replay in between keeps its task.
            result = await self.collection.delete_many({"_id": {"$in": ids}, "status": {"$in": _FINISHED}})
            if result.deleted_count != len(ids):
                kept = await self.collection.find({"_id": {"$in": ids}}, {"_id": 1}).to_list(None)
                ids = sorted(set(ids) - {doc["_id"] for doc in kept})
        return ids

    async def _finished_before(self, before: datetime, limit: int) -> builtins.list[str]:
        query = {"completed_at": {"$lt": before}, "status": {"$in": _EXPIRING}}
        async with self._errors():
            found = (
                await self.collection.find(query, {"_id": 1})
                .sort([("completed_at", ASCENDING)])
                .limit(limit)
                .to_list(None)
            )
        return [doc["_id"] for doc in found]
