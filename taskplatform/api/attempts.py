"""What ``GET /api/v1/tasks/{id}/attempts`` adds to the stored history: the attempt running now,
and the host of attempts recorded by another process (from the worker registry)."""

from __future__ import annotations

from taskplatform.models import BackgroundTask, TaskStatus, utcnow
from taskplatform.models.attempt import AttemptOutcome, AttemptRecord
from taskplatform.runtime import Runtime

#: Nodes whose host one listing looks up in the registry, at the most.
MOST_HOST_LOOKUPS = 20


def running_attempt(task: BackgroundTask) -> AttemptRecord | None:
    """The attempt running now (not stored until it ends), or None."""
    if task.status is not TaskStatus.RUNNING or task.awaiting_children or task.execution_node_id is None:
        return None
    started = task.started_at
    return AttemptRecord(
        id=f"{task.id}:{task.replays}:{task.retry_count}:running",
        task_id=task.id,
        generation=task.replays,
        attempt=task.retry_count,
        node_id=task.execution_node_id,
        started_at=started,
        duration_seconds=(utcnow() - started).total_seconds() if started is not None else None,
        outcome=AttemptOutcome.RUNNING,
    )


async def with_hosts(runtime: Runtime, records: list[AttemptRecord]) -> list[AttemptRecord]:
    """``records`` with the host of their node filled in from the registry where they name none
    (an attempt a reaper ended, or one running now), for a bounded number of nodes."""
    wanted = list(dict.fromkeys(r.node_id for r in records if r.host is None and r.node_id is not None))
    hosts: dict[str, str] = {}
    for node in wanted[:MOST_HOST_LOOKUPS]:
        worker = await runtime.store.get_worker(node)
        if worker is not None:
            hosts[node] = worker.host
    return [
        r.model_copy(update={"host": hosts[r.node_id]}) if r.host is None and r.node_id in hosts else r
        for r in records
    ]
