"""Where a task may run: one named worker node (``node``), or the workers carrying some labels.

A node target routes the task to that worker's own queue (``tasks.node.<node id>``, declared by
the worker when it starts; quorum, so nothing in it is lost when the worker restarts). While the
node is offline the task waits in that queue; once the node has been offline for
``target_timeout`` seconds (counted from its last heartbeat, or from the submission when that is
later) the fleet sweep fails the task with ``target-offline``. A node target needs a node id that
survives a restart (``TASKPLATFORM_NODE_ID``), or the worker comes back as another node.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from taskplatform.models.labels import Labels
from topology.spec import node_routing_key, selector_id, selector_routing_key

#: How long a targeted task waits for its offline target at most (and by default).
MAX_TARGET_TIMEOUT_SECONDS = 86_400.0
DEFAULT_TARGET_TIMEOUT_SECONDS = 300.0
#: A node id as a target: what a queue name can carry after its prefix (255 bytes in all).
NODE_ID_MAX = 200
#: Printable ASCII without spaces: one byte a character, so 200 fit a queue name's 255 bytes.
NODE_ID_PATTERN = r"^[!-~]+$"


class TaskTarget(BaseModel):
    """``{"node": "db-1"}`` runs the task on that worker node only."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    node: str | None = Field(
        default=None,
        min_length=1,
        max_length=NODE_ID_MAX,
        pattern=NODE_ID_PATTERN,
        description="The worker node (its node id, as `GET /api/v1/workers` lists it) that runs the task.",
    )
    labels: Labels | None = Field(
        default=None,
        description="The labels every worker that runs it carries (with `mode`).",
    )
    mode: Literal["any", "each"] = Field(
        default="any",
        description="With `labels`: `each` runs the task once on every online worker carrying them "
        "(one child task per worker); `any` on one of them.",
    )
    target_timeout: float = Field(
        default=DEFAULT_TARGET_TIMEOUT_SECONDS,
        gt=0,
        le=MAX_TARGET_TIMEOUT_SECONDS,
        description="Seconds the task waits for an offline target before it fails with `target-offline`.",
    )

    @model_validator(mode="after")
    def _one_way(self) -> TaskTarget:
        if (self.node is None) == (self.labels is None):
            raise ValueError("name either a node or labels, not both and not neither")
        if self.labels is not None and not self.labels:
            raise ValueError("labels: name at least one label")
        if self.node is not None and self.mode != "any":
            raise ValueError("mode 'each' needs labels: a node target runs on that node")
        return self

    def route(self, task_type: str) -> str | None:
        """The routing key of a task of ``task_type`` aimed here: its node's queue (``@node:``),
        or the queue of the workers carrying the labels and serving the type (``@select:``);
        None for ``mode: each`` (the parent runs nowhere; its children are aimed at nodes)."""
        if self.node is not None:
            return node_routing_key(self.node)
        if self.mode == "any" and self.labels:
            return selector_routing_key(selector_id(task_type, self.labels))
        return None


class SelectorAnnouncement(BaseModel):
    """A message of the selectors stream: tasks of ``task_type`` for any worker carrying
    ``labels`` wait in the queue of ``selector``; each worker with those labels that serves the
    type consumes it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    selector: str = Field(pattern=r"^[0-9a-f]{24}$")
    task_type: str = Field(min_length=1, max_length=128)
    labels: Labels = Field(min_length=1)
    #: Consumers the queue had when the announcer declared it (None: not said). 0 tells workers
    #: that follow the selector already that their consumer is gone (the queue was made again).
    consumers: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> SelectorAnnouncement:
        if selector_id(self.task_type, self.labels) != self.selector:
            raise ValueError("the selector is not the one of this type and these labels")
        return self
