"""What every mixin of ``MongoTaskStore`` needs of the store it is part of, and the mapping
between task models and documents."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from taskplatform.models import BackgroundTask
from taskplatform.models.task import idempotency_scope
from taskplatform.store.ports import StoreClock

_TOP_DATETIMES = (
    "created_at",
    "updated_at",
    "started_at",
    "completed_at",
    "last_attempt_at",
    "next_attempt_at",
    "lease_until",
)
_OUTBOX_DATETIMES = ("lease_until", "published_at")
#: The parent's roll-up ledger: ``{child_id: {"b": bucket, "v": child version}}``. Not part
#: of the task model; only ``apply_rollup`` writes it (every other update ``$set``s fields).
LEDGER = "rollup"
#: The field of a task document that holds its attempt history (``MongoAttemptHistory``).
ATTEMPT_LOG = "attempt_log"
#: What a read of a task leaves on the server: the parent's ledger (an entry per child) and the
#: attempt history (up to ``MAX_ATTEMPTS_KEPT`` records) are not part of the task model.
TASK_PROJECTION: Mapping[str, int] = {LEDGER: 0, ATTEMPT_LOG: 0}


def aware(value: Any) -> Any:
    """A BSON datetime in UTC (BSON datetimes have no zone; a tz_aware client returns UTC, an
    emulation may not)."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class MongoPart(StoreClock, ABC):
    """The store's database and collections, its translation of driver errors, its documents."""

    @property
    @abstractmethod
    def database(self) -> Any:
        """The store's database."""

    @property
    @abstractmethod
    def collection(self) -> Any:
        """The tasks collection."""

    @abstractmethod
    def _collection_named(self, name: str) -> Any:
        """The collection ``name`` of the store's database."""

    @abstractmethod
    def _errors(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Translates driver errors to StoreError."""

    @staticmethod
    def _to_doc(task: BackgroundTask) -> dict[str, Any]:
        doc = task.model_dump(mode="python", exclude={"id"})
        doc["_id"] = task.id
        doc["status"] = task.status.value
        doc["outbox"]["status"] = task.outbox.status.value
        for name in ("error_info", "sub_task_status_summary"):
            model = getattr(task, name)
            doc[name] = model.model_dump(mode="json") if model is not None else None
        scope = idempotency_scope(task.user_id, task.idempotency_key)
        if scope is not None:  # absent otherwise: the unique index is sparse
            doc["idempotency_scope"] = scope
        return doc

    @staticmethod
    def _to_task(doc: Mapping[str, Any]) -> BackgroundTask:
        data = dict(doc)
        data.pop(LEDGER, None)
        data.pop(ATTEMPT_LOG, None)
        data["id"] = data.pop("_id")
        for name in _TOP_DATETIMES:
            data[name] = aware(data.get(name))
        outbox = dict(data.get("outbox") or {})
        for name in _OUTBOX_DATETIMES:
            outbox[name] = aware(outbox.get(name))
        data["outbox"] = outbox
        return BackgroundTask.model_validate(data)
