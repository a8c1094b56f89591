"""The parent roll-up on MongoDB (a mixin of ``MongoTaskStore``): the ledger is a sub-document of
the parent, so a roll-up is one atomic update of one document (see ``taskplatform.store.rollup``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymongo import ReturnDocument

from taskplatform.errors import StoreError
from taskplatform.models import SubTaskStatusSummary, TaskStatus, utcnow
from taskplatform.store.mongo.part import LEDGER, MongoPart
from taskplatform.store.rollup import LedgerEntry, check_child_id, rollup_delta
from taskplatform.store.types import PARENT_FIELDS, ParentState

SUMMARY = "sub_task_status_summary"
#: Lost races a roll-up retries before giving up; each loss means another roll-up won.
_ROLLUP_ATTEMPTS = 1000
_PARENT_PROJECTION = {name: 1 for name in PARENT_FIELDS if name != "id"}


def _parent_state(doc: Mapping[str, Any]) -> ParentState:
    return ParentState.from_mapping({**doc, "id": doc["_id"]})


class MongoRollup(MongoPart):
    """``apply_rollup`` over the tasks collection."""

    async def _refuse_a_second_parent(self, parent_id: str, child_id: str) -> None:
        """A child is counted in one parent (``ParentRollups``). Each parent keeps its own ledger,
        so the other parent looked in is the one the child's document names, by ``_id``: the
        only parent the platform rolls a child into."""
        child = await self.collection.find_one({"_id": child_id}, projection={"parent_task_id": 1})
        named = child.get("parent_task_id") if child is not None else None
        if named is None or named == parent_id:
            return
        counting = {"_id": named, f"{LEDGER}.{child_id}": {"$exists": True}}
        if await self.collection.find_one(counting, projection={"_id": 1}) is not None:
            raise ValueError(f"task {child_id} is a child of {named}, not of {parent_id}")

    async def apply_rollup(
        self, parent_id: str, child_id: str, status: TaskStatus, child_version: int
    ) -> ParentState | None:
        """One document, so one atomic update: read the child's ledger entry, then update the
        parent only if that entry is still what was read (else another roll-up of this child
        won the race: read again). Counters move with ``$inc``, so roll-ups of other
        children never conflict with this one."""
        check_child_id(child_id)
        async with self._errors():
            for _ in range(_ROLLUP_ATTEMPTS):
                # Only this child's ledger entry and the parent's own fields: the ledger and
                # the parameters grow with the batch.
                path = f"{LEDGER}.{child_id}"
                doc = await self.collection.find_one(
                    {"_id": parent_id}, projection={**_PARENT_PROJECTION, path: 1}
                )
                if doc is None:
                    return None
                entry = (doc.get(LEDGER) or {}).get(child_id)
                current = LedgerEntry(entry["b"], entry["v"]) if entry is not None else None
                if current is None:
                    await self._refuse_a_second_parent(parent_id, child_id)
                delta = rollup_delta(current, status, child_version)
                if delta is None:
                    return _parent_state(doc)
                query: dict[str, Any] = {"_id": parent_id}
                if current is None:
                    query[path] = {"$exists": False}
                else:
                    query.update({f"{path}.b": current.bucket, f"{path}.v": current.version})
                update: dict[str, Any] = {"$set": {path: {"b": delta.entry.bucket, "v": delta.entry.version}}}
                if delta.increments:
                    update["$set"]["updated_at"] = utcnow()
                    update["$inc"] = {"version": 1}
                    if doc.get(SUMMARY) is None:
                        # No counters to $inc yet: set them all, unless another roll-up did first.
                        query[SUMMARY] = None
                        counts = SubTaskStatusSummary().model_dump()
                        for name, n in delta.increments.items():
                            counts[name] += n
                        update["$set"][SUMMARY] = counts
                    else:
                        query[SUMMARY] = {"$ne": None}
                        update["$inc"].update({f"{SUMMARY}.{k}": n for k, n in delta.increments.items()})
                after = await self.collection.find_one_and_update(
                    query, update, projection=_PARENT_PROJECTION, return_document=ReturnDocument.AFTER
                )
                if after is not None:
                    return _parent_state(after)
        raise StoreError(f"roll-up of {child_id} into {parent_id} kept losing races; try again")
