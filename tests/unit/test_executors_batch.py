"""The batch reference executables: chunked child submission, progress, cancellation, params."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from executors.batch import (
    MAX_SCENES,
    MAX_SUMMARY_ITEMS,
    SUBMIT_CHUNK_SIZE,
    BatchGenerateScene,
    BatchGenerateSummary,
    BatchResult,
    submit_in_chunks,
)
from executors.scene import GenerateScene
from executors.summary import GenerateSummary
from taskplatform.errors import Cancelled
from taskplatform.tasks.executable import BackgroundTaskExecutable, Progress, TaskContext
from taskplatform.tasks.registry import ExecutableRegistry
from taskplatform.testing import FakeTaskContext


def parent_context(
    parameters: Any, *, cancelled: bool = False, cancel_after_calls: int | None = None
) -> FakeTaskContext[Any]:
    """A parent task's context; ``cancel_after_calls`` flips ``cancelled`` after that many
    ``submit_sub_tasks`` calls."""
    return FakeTaskContext(
        parameters,
        task_id="parent-1",
        task_type="batch",
        attempt=1,
        user_id="user-1",
        cancelled=cancelled,
        cancel_after_submits=cancel_after_calls,
    )


def _as_context(ctx: FakeTaskContext[Any]) -> TaskContext[Any]:
    return ctx  # mypy checks here that the fake really implements the protocol


def child_ids(ctx: FakeTaskContext[Any], count: int) -> list[str]:
    return [ctx.sub_task_id(str(i)) for i in range(count)]


def summary_item(index: int) -> dict[str, Any]:
    return {"text": f"Text number {index}. It has two sentences.", "max_sentences": 1 + index % 3}


def scene_item(index: int) -> dict[str, Any]:
    return {
        "setting": {"location": f"platform {index}", "weather": "fog"},
        "characters": [{"name": "Ada"}, {"name": "Bo", "mood": "anxious"}],
        "beats": [f"Ada finds ticket {index}"],
        "seed": index,
    }


BATCHES: list[tuple[type[BackgroundTaskExecutable[Any, Any]], str, str, Any]] = [
    (BatchGenerateSummary, "items", "generate_summary", summary_item),
    (BatchGenerateScene, "scenes", "generate_scene", scene_item),
]
batch_cases = pytest.mark.parametrize(("cls", "field", "child_type", "make_item"), BATCHES)


# ------------------------------------------------------------ submission
@batch_cases
async def test_one_child_per_item_with_the_items_parameters_keyed_by_index(
    cls: Any, field: str, child_type: str, make_item: Any
) -> None:
    params = cls.Params(**{field: [make_item(i) for i in range(3)]})
    ctx = parent_context(params)

    result = await cls().execute(_as_context(ctx))

    children = ctx.sub_tasks
    assert [c.task_type for c in children] == [child_type] * 3
    assert [c.key for c in children] == ["0", "1", "2"]
    items = getattr(params, field)
    for child, item in zip(children, items, strict=True):
        assert isinstance(child.parameters, BaseModel)
        assert child.parameters.model_dump() == item.model_dump()
    assert result == BatchResult(child_task_type=child_type, submitted=3, child_task_ids=child_ids(ctx, 3))


async def test_child_parameters_validate_as_the_child_executables_params() -> None:
    params = BatchGenerateScene.Params(scenes=[scene_item(7)])
    ctx = parent_context(params)

    await BatchGenerateScene().execute(_as_context(ctx))

    submitted = ctx.sub_tasks[0].parameters
    assert isinstance(submitted, BaseModel)
    assert GenerateScene.Params.model_validate(submitted.model_dump()) == params.scenes[0]


async def test_large_batch_is_submitted_in_chunks_with_ids_in_item_order() -> None:
    count = 2 * SUBMIT_CHUNK_SIZE + 201
    params = BatchGenerateSummary.Params(items=[summary_item(i) for i in range(count)])
    ctx = parent_context(params)

    result = await BatchGenerateSummary().execute(_as_context(ctx))

    assert [len(call) for call in ctx.submit_calls] == [SUBMIT_CHUNK_SIZE, SUBMIT_CHUNK_SIZE, 201]
    assert [child.key for child in ctx.sub_tasks] == [str(i) for i in range(count)]
    assert result.submitted == count
    assert result.child_task_ids == child_ids(ctx, count)
    submitted_texts = [
        c.parameters.text for c in ctx.sub_tasks if isinstance(c.parameters, GenerateSummary.Params)
    ]
    assert submitted_texts == [item.text for item in params.items]


async def test_a_batch_of_exactly_one_chunk_takes_one_call() -> None:
    params = BatchGenerateSummary.Params(items=[summary_item(i) for i in range(SUBMIT_CHUNK_SIZE)])
    ctx = parent_context(params)

    await BatchGenerateSummary().execute(_as_context(ctx))

    assert len(ctx.submit_calls) == 1


async def test_progress_is_reported_after_every_chunk_and_ends_at_100() -> None:
    params = BatchGenerateSummary.Params(items=[summary_item(i) for i in range(1201)])
    ctx = parent_context(params)

    await BatchGenerateSummary().execute(_as_context(ctx))

    assert all(isinstance(p, Progress) for p in ctx.progress)
    reported = [p for p in ctx.progress if isinstance(p, Progress)]
    assert [p.percent for p in reported] == [41.6, 83.3, 100.0]
    assert [p.message for p in reported] == [
        "submitted 500/1201 children",
        "submitted 1000/1201 children",
        "submitted 1201/1201 children",
    ]
    assert ctx.messages == ["batch children submitted"]


async def test_retried_parent_submits_the_same_keys_again() -> None:
    params = BatchGenerateSummary.Params(items=[summary_item(i) for i in range(7)])
    first, second = parent_context(params), parent_context(params)
    second.attempt = 2

    await BatchGenerateSummary().execute(_as_context(first))
    await BatchGenerateSummary().execute(_as_context(second))

    assert first.sub_tasks == second.sub_tasks


# ------------------------------------------------------------ cancellation
async def test_cancellation_between_chunks_raises_cancelled_and_stops_submitting() -> None:
    params = BatchGenerateSummary.Params(items=[summary_item(i) for i in range(1201)])
    ctx = parent_context(params, cancel_after_calls=1)

    with pytest.raises(Cancelled, match="after 500 of 1201 generate_summary children"):
        await BatchGenerateSummary().execute(_as_context(ctx))

    assert len(ctx.submit_calls) == 1
    assert len(ctx.sub_tasks) == SUBMIT_CHUNK_SIZE
    assert len(ctx.progress) == 1


async def test_cancelled_before_start_submits_nothing() -> None:
    params = BatchGenerateScene.Params(scenes=[scene_item(0)])
    ctx = parent_context(params, cancelled=True)

    with pytest.raises(Cancelled, match="after 0 of 1"):
        await BatchGenerateScene().execute(_as_context(ctx))

    assert ctx.submit_calls == []


async def test_cancellation_after_the_last_chunk_still_returns_the_result() -> None:
    params = BatchGenerateScene.Params(scenes=[scene_item(i) for i in range(3)])
    ctx = parent_context(params, cancel_after_calls=1)

    result = await BatchGenerateScene().execute(_as_context(ctx))

    assert result.submitted == 3  # nothing was left to stop; the children already exist


async def test_submit_in_chunks_uses_the_given_chunk_size_and_rejects_zero() -> None:
    items = [GenerateSummary.Params(**summary_item(i)) for i in range(5)]
    ctx = parent_context(None)

    result = await submit_in_chunks(_as_context(ctx), "generate_summary", items, chunk_size=2)

    assert [[c.key for c in call] for call in ctx.submit_calls] == [["0", "1"], ["2", "3"], ["4"]]
    assert result.child_task_ids == child_ids(ctx, 5)
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        await submit_in_chunks(_as_context(ctx), "generate_summary", items, chunk_size=0)


# ------------------------------------------------------------ parameters
@batch_cases
def test_empty_batch_is_rejected(cls: Any, field: str, child_type: str, make_item: Any) -> None:
    with pytest.raises(ValidationError, match="at least 1 item"):
        cls.Params(**{field: []})


@pytest.mark.parametrize(
    ("cls", "field", "make_item", "limit"),
    [
        (BatchGenerateSummary, "items", summary_item, MAX_SUMMARY_ITEMS),
        (BatchGenerateScene, "scenes", scene_item, MAX_SCENES),
    ],
)
def test_batch_over_the_limit_is_rejected_and_the_limit_itself_is_accepted(
    cls: Any, field: str, make_item: Any, limit: int
) -> None:
    item = make_item(0)
    assert len(getattr(cls.Params(**{field: [item] * limit}), field)) == limit
    with pytest.raises(ValidationError, match=f"at most {limit} items"):
        cls.Params(**{field: [item] * (limit + 1)})


def test_invalid_summary_item_error_names_its_index() -> None:
    items = [summary_item(0), summary_item(1), {"text": ""}]

    with pytest.raises(ValidationError) as info:
        BatchGenerateSummary.Params(items=items)

    assert [error["loc"] for error in info.value.errors()] == [("items", 2, "text")]


def test_invalid_scene_item_error_names_its_index() -> None:
    bad = {**scene_item(1), "characters": [{"name": "Ada"}, {"name": "ada"}]}

    with pytest.raises(ValidationError, match="character names must be unique") as info:
        BatchGenerateScene.Params(scenes=[scene_item(0), bad])

    assert [error["loc"] for error in info.value.errors()] == [("scenes", 1, "characters")]


def test_unknown_batch_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        BatchGenerateSummary.Params.model_validate({"items": [summary_item(0)], "max_sentences": 2})


# ------------------------------------------------------------ the executable contract
@batch_cases
def test_batch_executables_meet_the_contract(cls: Any, field: str, child_type: str, make_item: Any) -> None:
    cls.validate_definition()
    assert cls.Result is BatchResult
    assert cls.queue == "default"
    assert cls.description
    assert cls.task_type == f"batch_{child_type}"


def test_registry_accepts_the_batch_executables_beside_their_children() -> None:
    registry = ExecutableRegistry([GenerateSummary, GenerateScene, BatchGenerateSummary, BatchGenerateScene])

    assert registry.task_types() == [
        "batch_generate_scene",
        "batch_generate_summary",
        "generate_scene",
        "generate_summary",
    ]
    assert registry.get("batch_generate_summary") is BatchGenerateSummary
    assert registry.queues() == {"default": registry.task_types()}


def test_batch_module_loads_only_its_own_executables() -> None:
    registry = ExecutableRegistry.discover(["executors.batch"], entry_point_group=None)
    assert sorted(registry.task_types()) == ["batch_generate_scene", "batch_generate_summary"]
