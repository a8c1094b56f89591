"""A worker node's own queue, and what it does when that queue was gone.

The broker deletes a node queue nobody consumed for ``NODE_QUEUE_EXPIRES_SECONDS`` (and an
operator may delete one), with the messages waiting in it. The tasks behind them stay QUEUED or
RETRYING in the store, aimed at the node, with no message left: when the node comes back they
would wait forever (the target sweep fails only tasks whose node stays away). So a worker that
finds its queue missing at start publishes every task still waiting for it again once the new
queue is consumed. A message that did survive elsewhere (a retry in a delay tier) makes a
duplicate, which the claim settles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from aiormq.exceptions import ChannelNotFoundEntity

from taskplatform.errors import TRANSIENT_ERRORS
from taskplatform.messaging.connection import BrokerConnection
from taskplatform.models import BackgroundTask, TaskStatus
from taskplatform.store.types import MAX_PAGE_SIZE, TaskFilter, TaskPage

log = logging.getLogger("taskplatform.worker.consumer")

#: First wait before trying the republish again after a store or broker fault (doubling to 30 s).
RETRY_SECONDS = 1.0
#: What a worker republishes after its queue was gone, at the most (the oldest beyond stay to
#: the target sweep and to operators: ``GET /api/v1/tasks?node=...``).
MOST_RESTORED = 10_000


class WaitingTasks(Protocol):
    async def list(
        self, filters: TaskFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> TaskPage: ...


class TaskPublisher(Protocol):
    async def publish_task(self, task: BackgroundTask) -> None: ...


async def queue_missing(broker: BrokerConnection, name: str) -> bool:
    """Whether queue ``name`` does not exist (asked on a channel of its own: the broker closes
    the channel of a passive declare that finds nothing)."""
    probe = await broker.channel()
    try:
        await probe.declare_queue(name, passive=True)
    except ChannelNotFoundEntity:
        return True
    finally:
        with contextlib.suppress(Exception):
            await probe.close()
    return False


async def republish_waiting(store: WaitingTasks, publisher: TaskPublisher, node_id: str) -> int:
    """Publish again every task waiting (QUEUED or RETRYING) that is aimed at ``node_id``, up to
    ``MOST_RESTORED``; how many."""
    published = 0
    for status in (TaskStatus.QUEUED, TaskStatus.RETRYING):
        cursor: str | None = None
        while published < MOST_RESTORED:
            page = await store.list(
                TaskFilter(status=status, node=node_id), limit=MAX_PAGE_SIZE, cursor=cursor
            )
            for task in page.items:
                if task.target is not None and task.target.node == node_id and published < MOST_RESTORED:
                    await publisher.publish_task(task)
                    published += 1
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    if published:
        log.warning(
            "the queue of node %s was gone (expired or deleted) with what waited in it; "
            "published the %d task(s) still waiting for this node again",
            node_id,
            published,
        )
    return published


async def republish_until_done(
    store: WaitingTasks, publisher: TaskPublisher, node_id: str, *, retry_seconds: float = RETRY_SECONDS
) -> int:
    """``republish_waiting`` until it gets through: a store or broker fault waits (doubling up to
    30 s) and starts it over (what was published already is published again: a duplicate the
    claim settles). Run in the background, so the worker starts meanwhile; cancelled when it
    stops."""
    delay = retry_seconds
    while True:
        try:
            return await republish_waiting(store, publisher, node_id)
        except TRANSIENT_ERRORS as exc:
            log.warning(
                "publishing the tasks waiting for node %s again failed (%s); trying again in %.0fs",
                node_id,
                exc,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
