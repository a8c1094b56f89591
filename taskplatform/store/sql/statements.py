"""The hot-path statements for SQLite, built once with bind parameters.

Building a SQLAlchemy statement costs far more CPU than executing a cached one, so the
operations every task goes through (insert, get, claim, complete, mark published) use
these prebuilt statements. PostgreSQL runs the same operations on the driver directly
(``pg_fast``).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    String,
    and_,
    bindparam,
    false,
    func,
    insert,
    null,
    or_,
    select,
    tuple_,
    update,
)

from taskplatform.models import OutboxStatus, TaskStatus
from taskplatform.store.sql.schema import UTCDateTime, json_type, tasks

RUNNING = TaskStatus.RUNNING.value
PENDING = OutboxStatus.PENDING.value

INSERT = insert(tasks)

GET = select(tasks).where(tasks.c.id == bindparam("task_id"))

_now = bindparam("now", type_=UTCDateTime())
_claim_sets = {
    "status": RUNNING,
    "execution_node_id": bindparam("node", type_=String()),
    "lease_until": bindparam("lease", type_=UTCDateTime()),
    "last_attempt_at": _now,
    "started_at": _now,
    "next_attempt_at": null(),
    "updated_at": _now,
    "outbox_status": OutboxStatus.PUBLISHED.value,
    "outbox_published_at": func.coalesce(tasks.c.outbox_published_at, _now),
    "outbox_lease_until": null(),
    "outbox_lease_owner": null(),
    "version": tasks.c.version + 1,
}
#: Claimable: runnable, or RUNNING under a lapsed lease (its owner died).
_claimable = or_(
    tasks.c.status.in_([TaskStatus.QUEUED.value, TaskStatus.RETRYING.value]),
    and_(tasks.c.status == RUNNING, tasks.c.lease_until.is_not(None), tasks.c.lease_until < _now),
)

#: Claim many; ``claims`` is a list of (id, attempt, priority) tuples.
CLAIM_MANY = (
    update(tasks)
    .where(
        tuple_(tasks.c.id, tasks.c.retry_count, tasks.c.priority).in_(bindparam("claims", expanding=True)),
        _claimable,
    )
    .values(**_claim_sets)
    .returning(*tasks.columns)
)
#: Claim many, each only for its task type and replay generation too; ``claims`` is a list of
#: (id, attempt, priority, task type, generation) tuples.
CLAIM_MANY_CHECKED = (
    update(tasks)
    .where(
        tuple_(tasks.c.id, tasks.c.retry_count, tasks.c.priority, tasks.c.task_type, tasks.c.replays).in_(
            bindparam("claims", expanding=True)
        ),
        _claimable,
    )
    .values(**_claim_sets)
    .returning(*tasks.columns)
)

#: One completion, only by the owner of that attempt (not once it waits for its children);
#: ``event_id`` (may be None: keep the last one) becomes ``last_event_id``.
COMPLETE_ONE = (
    update(tasks)
    .where(
        tasks.c.id == bindparam("task_id"),
        tasks.c.retry_count == bindparam("attempt"),
        tasks.c.status == RUNNING,
        tasks.c.execution_node_id == bindparam("node"),
        tasks.c.awaiting_children == false(),
    )
    .values(
        status=TaskStatus.COMPLETED.value,
        result=bindparam("result_value", type_=json_type()),
        completed_at=_now,
        lease_until=null(),
        updated_at=_now,
        last_event_id=func.coalesce(bindparam("event_id", type_=String()), tasks.c.last_event_id),
        progress=func.coalesce(bindparam("progress_value", type_=JSON(none_as_null=True)), tasks.c.progress),
        version=tasks.c.version + 1,
    )
    .returning(tasks.c.id, tasks.c.version)
)

MARK_PUBLISHED = (
    update(tasks)
    .where(
        tasks.c.id.in_(bindparam("ids", expanding=True)),
        tasks.c.outbox_status == PENDING,
        tasks.c.outbox_lease_owner.is_not_distinct_from(bindparam("owner", type_=String())),
    )
    .values(
        outbox_status=OutboxStatus.PUBLISHED.value,
        outbox_published_at=_now,
        outbox_lease_until=null(),
        outbox_lease_owner=null(),
        version=tasks.c.version + 1,
    )
)
