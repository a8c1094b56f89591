"""Batch executables: fan a list of inputs out as one child task per item.

The parent only submits; the platform keeps it RUNNING until every child has finished,
then settles it COMPLETED or COMPLETED_WITH_ERRORS and keeps the per-status child counts
(``sub_task_status_summary``). Children are keyed by item index, so a retried parent that
submits again gets the same children back instead of duplicates. ``fan_out`` declares the
child count, so the API charges a batch its items plus one against the submit limit.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from executors.scene import GenerateScene
from executors.summary import GenerateSummary
from taskplatform.errors import Cancelled
from taskplatform.tasks.executable import BackgroundTaskExecutable, Progress, TaskContext

#: Children submitted per ``submit_sub_tasks`` call: bounded store/outbox writes per round trip.
SUBMIT_CHUNK_SIZE = 500
MAX_SUMMARY_ITEMS = 10_000
MAX_SCENES = 1_000


class BatchResult(BaseModel):
    """What a batch parent submitted; child outcomes are tracked by the platform."""

    child_task_type: str
    submitted: int
    child_task_ids: list[str] = Field(description="child task ids, in item order")


async def submit_in_chunks(
    ctx: TaskContext[BaseModel],
    child_task_type: str,
    items: Sequence[BaseModel],
    *,
    chunk_size: int = SUBMIT_CHUNK_SIZE,
) -> BatchResult:
    """Submit one ``child_task_type`` child per item, ``chunk_size`` per call.

    Each child's key is its item index. Progress is reported after every chunk, and
    cancellation is checked before each one.

    Args:
        ctx: The parent's task context.
        child_task_type: Task type of every child.
        items: Child parameters, in order.
        chunk_size: Children per ``submit_sub_tasks`` call.

    Returns:
        The batch result, child ids in item order.

    Raises:
        Cancelled: Cancellation was requested before every chunk was submitted.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    total = len(items)
    ids: list[str] = []
    for start in range(0, total, chunk_size):
        if ctx.cancelled:
            raise Cancelled(f"batch cancelled after {start} of {total} {child_task_type} children submitted")
        chunk = items[start : start + chunk_size]
        keys = [str(index) for index in range(start, start + len(chunk))]
        ids.extend(await ctx.submit_sub_tasks(child_task_type, chunk, keys=keys))
        done = len(ids)
        await ctx.update_progress(
            Progress(percent=round(100 * done / total, 1), message=f"submitted {done}/{total} children")
        )
    ctx.log_info("batch children submitted", child_task_type=child_task_type, submitted=len(ids))
    return BatchResult(child_task_type=child_task_type, submitted=len(ids), child_task_ids=ids)


class BatchGenerateSummary(BackgroundTaskExecutable["BatchGenerateSummary.Params", BatchResult]):
    """Summarize many texts: one ``generate_summary`` child per item."""

    task_type = "batch_generate_summary"
    queue = "default"
    description = f"Summarize up to {MAX_SUMMARY_ITEMS:,} texts, one generate_summary child task per text."

    class Params(BaseModel):
        """The texts to summarize, each with its own options."""

        model_config = ConfigDict(extra="forbid")

        items: list[GenerateSummary.Params] = Field(min_length=1, max_length=MAX_SUMMARY_ITEMS)

    Result = BatchResult

    @classmethod
    def fan_out(cls, params: BatchGenerateSummary.Params) -> int:
        """One child per item."""
        return len(params.items)

    async def execute(self, ctx: TaskContext[BatchGenerateSummary.Params]) -> BatchResult:
        """Submit the children in chunks and return their ids."""
        return await submit_in_chunks(ctx, GenerateSummary.task_type, ctx.parameters.items)


class BatchGenerateScene(BackgroundTaskExecutable["BatchGenerateScene.Params", BatchResult]):
    """Write many scenes: one ``generate_scene`` child per scene."""

    task_type = "batch_generate_scene"
    queue = "default"
    description = f"Write up to {MAX_SCENES:,} scenes, one generate_scene child task per scene."

    class Params(BaseModel):
        """The scenes to write."""

        model_config = ConfigDict(extra="forbid")

        scenes: list[GenerateScene.Params] = Field(min_length=1, max_length=MAX_SCENES)

    Result = BatchResult

    @classmethod
    def fan_out(cls, params: BatchGenerateScene.Params) -> int:
        """One child per item."""
        return len(params.scenes)

    async def execute(self, ctx: TaskContext[BatchGenerateScene.Params]) -> BatchResult:
        """Submit the children in chunks and return their ids."""
        return await submit_in_chunks(ctx, GenerateScene.task_type, ctx.parameters.scenes)
