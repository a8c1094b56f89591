"""Rate-limit reservations on MongoDB (a mixin of ``MongoTaskStore``): one document per key in
``rate_limits``, changed by one ``find_one_and_update`` with an update pipeline (upsert), which
is atomic on the document; see ``taskplatform.store.ratelimits`` for the algorithm."""

from __future__ import annotations

from pymongo import ReturnDocument

from taskplatform.models import utcnow
from taskplatform.store.mongo.part import MongoPart
from taskplatform.store.ratelimits import Reservation, check_rate, rate_key, reservation_of

RATE_LIMITS = "rate_limits"


class MongoRateLimits(MongoPart):
    """``reserve_rate`` over the store's database, in the store's clock (``now``): slots taken by
    processes on different machines are measured against one clock, so a limit they share holds."""

    async def reserve_rate(
        self, key: str, *, interval: float, burst: int = 1, max_wait: float, now: float | None = None
    ) -> Reservation:
        """Reserve the next slot of ``key``'s limit (one per ``interval`` seconds, bursts of
        ``burst``) if it opens within ``max_wait`` seconds."""
        check_rate(interval, burst, max_wait)
        at = self.now().timestamp() if now is None else now
        base = {"$max": [{"$ifNull": ["$tat", at]}, at]}
        # The stages run in order: the second sees the first's last_wait.
        pipeline = [
            {"$set": {"last_wait": {"$subtract": [{"$add": [base, interval]}, burst * interval + at]}}},
            {
                "$set": {
                    "tat": {
                        "$cond": [
                            {"$lte": ["$last_wait", max_wait]},
                            {"$add": [base, interval]},
                            {"$ifNull": ["$tat", at]},
                        ]
                    },
                    "updated_at": utcnow(),
                }
            },
        ]
        async with self._errors():
            doc = await self._collection_named(RATE_LIMITS).find_one_and_update(
                {"_id": rate_key(key)}, pipeline, upsert=True, return_document=ReturnDocument.AFTER
            )
        return reservation_of(float(doc["last_wait"]), max_wait)

    async def prune_rate_limits(self, *, now: float | None = None) -> int:
        """Delete the keys whose slots have all passed (such a key acts exactly like a new one)."""
        async with self._errors():
            result = await self._collection_named(RATE_LIMITS).delete_many(
                {"tat": {"$lt": self.now().timestamp() if now is None else now}}
            )
        return int(result.deleted_count)
