"""At-most-once task types (``Executable.at_most_once``): an attempt is never started twice.

Three ways an attempt could start again, and what this worker does for such a type instead:

- its delivery comes back while the attempt is (or was) running elsewhere, the task RUNNING at
  that attempt (its worker died, or lost its channel): the copy is acked away unrun, and the
  reaper dead-letters the attempt once its lease lapses (``Reaper._reap``: no retry);
- this worker shuts down before the attempt ends: the attempt fails for good (dead-lettered),
  not handed back to the queue;
- the attempt's worker vanishes: the reaper dead-letters it rather than scheduling another.

An operator replays the task (dead letters) once they know what the interrupted attempt did.
"""

from __future__ import annotations

import logging

from aio_pika.abc import AbstractIncomingMessage

from taskplatform.errors import PermanentFailure, StoreError
from taskplatform.models import BackgroundTask, TaskMessage, TaskStatus
from taskplatform.retry import RetryPolicy
from taskplatform.store.ports import TaskReads
from taskplatform.worker.outcomes import Failed
from taskplatform.worker.settlement import Settler

log = logging.getLogger(__name__)


class InterruptedByShutdown(PermanentFailure):
    """An at-most-once attempt was cut short by its worker's shutdown: it is not run again."""


async def started_elsewhere(
    store: TaskReads, settler: Settler, message: AbstractIncomingMessage, tm: TaskMessage
) -> bool:
    """Whether ``tm``'s attempt is (or was) running already; if so the delivery is acked unrun.
    A store that cannot answer leaves the decision to the claim (which never takes over a live
    lease, and waits out a lapsed one's owner first)."""
    try:
        current = await store.get(tm.task_id)
    except StoreError:
        return False
    if current is None or current.status is not TaskStatus.RUNNING or current.retry_count != tm.attempt:
        return False
    await settler.skip(
        message,
        f"task {tm.task_id} runs at most once and attempt {tm.attempt} started already (on "
        f"{current.execution_node_id}); this copy is not run: should that worker be gone, the reaper "
        "dead-letters the attempt",
    )
    return True


async def settle_interrupted(
    settler: Settler,
    message: AbstractIncomingMessage,
    task: BackgroundTask,
    *,
    node_id: str,
    policy: RetryPolicy,
) -> None:
    """Fail ``task``'s attempt for good: this worker shut down before it ended."""
    error = InterruptedByShutdown(
        f"worker {node_id} shut down while attempt {task.retry_count} ran; the task runs at most once, "
        "so it is not run again (it may have done part of its work): replay it once that is known"
    )
    log.warning("task %s (at most once) interrupted by shutdown: dead-lettered, not handed back", task.id)
    await settler.settle_attempt(
        message, task, Failed(error, ""), policy=policy, non_retryable=(InterruptedByShutdown,)
    )
