"""A submission weighs the tasks it creates: ``reserve_many`` takes them at once, all or none."""

from __future__ import annotations

import random
from typing import Any

import pytest

from executors.batch import BatchGenerateScene, BatchGenerateSummary
from executors.summary import GenerateSummary
from taskplatform.api.ratelimit import submission_weight
from taskplatform.ratelimit.limiter import MemoryRateLimiter, reserve_many
from taskplatform.store.ratelimits import Reservation
from taskplatform.tasks.registry import ExecutableRegistry

NOW = 1_800_000_000.0


def reference(
    tat: float, now: float, cost: int, interval: float, burst: int, max_wait: float
) -> tuple[Reservation, float]:
    """The GCRA step with a cost, written out: (reservation, the key's tat afterwards)."""
    base = max(tat, now)
    raw = base + cost * interval - burst * interval - now
    if raw <= max_wait:
        return Reservation(True, max(0.0, raw)), base + cost * interval
    return Reservation(False, max(0.0, raw)), tat


async def test_reserve_many_is_the_gcra_step_with_a_cost() -> None:
    rng = random.Random(7)
    limiter, tat, now = MemoryRateLimiter(), NOW, NOW
    for _ in range(500):
        now += rng.choice([0.0, 0.05, 0.3, 2.0])
        cost, max_wait = rng.randint(1, 10), rng.choice([0.0, 0.5, 3.0])
        got = await reserve_many(limiter, "k", cost, interval=0.2, burst=10, max_wait=max_wait, now=now)
        want, tat = reference(tat, now, cost, 0.2, 10, max_wait)
        assert got.granted == want.granted and got.wait == pytest.approx(want.wait, abs=1e-6)


async def test_a_full_burst_then_one_more_waits_one_interval_and_a_refusal_takes_nothing() -> None:
    limiter = MemoryRateLimiter()
    assert await reserve_many(limiter, "u", 10, interval=0.2, burst=10, max_wait=0, now=NOW) == Reservation(
        True, 0.0
    )
    refused = await reserve_many(limiter, "u", 3, interval=0.2, burst=10, max_wait=0, now=NOW)
    assert not refused.granted and refused.wait == pytest.approx(0.6)
    assert (await limiter.reserve("u", interval=0.2, burst=10, max_wait=0, now=NOW + 0.2)).granted


@pytest.mark.parametrize("count", [0, 11])
async def test_reserve_many_refuses_counts_that_could_never_be_granted(count: int) -> None:
    with pytest.raises(ValueError, match="count"):
        await reserve_many(MemoryRateLimiter(), "k", count, interval=1.0, burst=10, max_wait=0, now=NOW)


def test_batches_declare_one_child_per_item() -> None:
    summary = BatchGenerateSummary.Params.model_validate({"items": [{"text": "a b."}] * 42})
    assert BatchGenerateSummary.fan_out(summary) == 42
    assert GenerateSummary.fan_out(GenerateSummary.Params(text="words.")) == 0
    scenes = BatchGenerateScene.Params.model_construct(scenes=[None] * 5)  # the count is all it reads
    assert BatchGenerateScene.fan_out(scenes) == 5


@pytest.mark.parametrize(
    ("body", "weight"),
    [
        ({"task_type": "batch_generate_summary", "parameters": {"items": [{"text": "x."}] * 7}}, 8),
        ({"task_type": "generate_summary", "parameters": {"text": "x."}}, 1),
        ({"task_type": "batch_generate_summary", "parameters": {"items": []}}, 1),  # invalid: 422 later
        ({"task_type": "no_such_type", "parameters": {}}, 1),
        ([1, 2, 3], 1),
        (None, 1),
    ],
)
def test_a_submission_weighs_the_tasks_it_creates(body: Any, weight: int) -> None:
    registry = ExecutableRegistry([BatchGenerateSummary, GenerateSummary])
    assert submission_weight(body, registry) == weight
