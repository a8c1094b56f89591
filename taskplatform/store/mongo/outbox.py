"""The outbox on MongoDB (a mixin of ``MongoTaskStore``): entries are a sub-document of the task,
leased one atomic ``find_one_and_update`` at a time, so two relays never lease the same entry."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime

from pymongo import ASCENDING, ReturnDocument

from taskplatform.models import BackgroundTask, OutboxStatus, utcnow
from taskplatform.store.base import outbox_published_changes
from taskplatform.store.mongo.part import TASK_PROJECTION, MongoPart
from taskplatform.store.primitives import failed_lease_until


class MongoOutbox(MongoPart):
    """``claim_pending_outbox``, ``mark_published`` and ``record_publish_failure``."""

    async def claim_pending_outbox(
        self, *, owner: str, limit: int, lease_until: datetime, created_before: datetime
    ) -> builtins.list[BackgroundTask]:
        now = self.now()  # outbox leases are the store's time, like task leases
        claimable = {
            "outbox.status": OutboxStatus.PENDING.value,
            "created_at": {"$lt": created_before},
            "$or": [{"outbox.lease_until": None}, {"outbox.lease_until": {"$lt": now}}],
        }
        claimed: builtins.list[BackgroundTask] = []
        async with self._errors():
            # Each claim is one atomic find-and-modify, so two relays never lease the same entry.
            for _ in range(limit):
                doc = await self.collection.find_one_and_update(
                    claimable,
                    {
                        "$set": {"outbox.lease_until": lease_until, "outbox.lease_owner": owner},
                        "$inc": {"version": 1},
                    },
                    sort=[("created_at", ASCENDING)],
                    projection=TASK_PROJECTION,
                    return_document=ReturnDocument.AFTER,
                )
                if doc is None:
                    break
                claimed.append(self._to_task(doc))
        return claimed

    async def mark_published(self, task_ids: Sequence[str], *, owner: str | None = None) -> int:
        if not task_ids:
            return 0
        query = {
            "_id": {"$in": list(task_ids)},
            "outbox.status": OutboxStatus.PENDING.value,
            "outbox.lease_owner": owner,
        }
        async with self._errors():
            result = await self.collection.update_many(
                query,
                {"$set": outbox_published_changes(utcnow()), "$inc": {"version": 1}},
            )
        return int(result.modified_count)

    async def record_publish_failure(self, task_id: str, error: str, *, retry_in: float = 0.0) -> None:
        async with self._errors():
            await self.collection.update_one(
                {"_id": task_id, "outbox.status": OutboxStatus.PENDING.value},
                {
                    "$inc": {"outbox.attempts": 1, "version": 1},
                    # free for a relay pass after retry_in, not only after the lease; the owner
                    # stays, so a late mark of an earlier publish cannot take this entry for published
                    "$set": {
                        "outbox.last_error": error[:2000],
                        "outbox.lease_until": failed_lease_until(self.now(), retry_in),
                    },
                },
            )
