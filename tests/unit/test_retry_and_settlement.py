from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from taskplatform.errors import Cancelled, PermanentFailure, Retry, StoreError
from taskplatform.models import TaskStatus
from taskplatform.retry import RetryPolicy, Verdict, classify
from taskplatform.worker.outcomes import Action, Failed, Succeeded, decide
from topology import DelayHop, build_topology

POLICY = RetryPolicy(max_attempts=3, initial_delay=1.0, exp_base=2.0, max_delay=3.0, jitter=0.0)


class _M(BaseModel):
    n: int


def failed(exc: BaseException) -> Failed:
    return Failed(exc, "tb")


def test_policy_delays_grow_exponentially_up_to_the_cap() -> None:
    assert [POLICY.delay_after(i) for i in range(4)] == [1.0, 2.0, 3.0, 3.0]
    assert POLICY.attempts_left(0) and POLICY.attempts_left(1) and not POLICY.attempts_left(2)
    jittered = RetryPolicy(initial_delay=1.0, jitter=0.5)
    assert all(1.0 <= jittered.delay_after(0) <= 1.5 for _ in range(50))
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_classification_rules_in_order() -> None:
    class Mine(Exception):
        pass

    assert classify(Retry()) is Verdict.RETRY
    assert classify(PermanentFailure()) is Verdict.FAIL
    assert classify(Cancelled()) is Verdict.CANCEL
    assert classify(Mine()) is Verdict.FAIL  # undeclared: a bug, not worth retrying
    assert classify(Mine(), retryable=(Mine,)) is Verdict.RETRY
    assert classify(Mine(), retryable=(Exception,), non_retryable=(Mine,)) is Verdict.FAIL
    assert classify(TimeoutError()) is Verdict.RETRY
    assert classify(StoreError("down")) is Verdict.RETRY
    with pytest.raises(ValidationError) as info:
        _M.model_validate({"n": "x"})
    assert classify(info.value) is Verdict.FAIL


def test_decide_maps_outcomes_to_status_and_broker_action() -> None:
    ok = decide(Succeeded(_M(n=1)), attempt=0, policy=POLICY)
    assert (ok.status, ok.action) == (TaskStatus.COMPLETED, Action.ACK)

    retry = decide(failed(TimeoutError()), attempt=1, policy=POLICY)
    assert (retry.status, retry.action, retry.delay) == (TaskStatus.RETRYING, Action.RETRY_LATER, 2.0)

    asked = decide(failed(Retry(delay=7.5)), attempt=0, policy=POLICY)
    assert asked.delay == 7.5

    exhausted = decide(failed(TimeoutError()), attempt=2, policy=POLICY)
    assert (exhausted.status, exhausted.action, exhausted.reason) == (
        TaskStatus.DEAD_LETTER,
        Action.DEAD_LETTER,
        "attempts-exhausted",
    )
    permanent = decide(failed(PermanentFailure("no")), attempt=0, policy=POLICY)
    assert (permanent.status, permanent.reason) == (TaskStatus.DEAD_LETTER, "permanent-failure")
    bug = decide(failed(KeyError("k")), attempt=0, policy=POLICY)
    assert (bug.status, bug.reason) == (TaskStatus.DEAD_LETTER, "non-retryable")
    cancelled = decide(failed(Cancelled()), attempt=0, policy=POLICY)
    assert (cancelled.status, cancelled.action) == (TaskStatus.CANCELLED, Action.ACK)


def test_ttl_tiers_dead_letter_with_the_message_routing_key_and_hops_pick_the_longest_fitting_tier() -> None:
    topo = build_topology({"default": ["a"]}, prefix="p.", delay_tiers=(1, 2, 4, 8))
    tiers = {q.name: dict(q.arguments) for q in topo.queues if ".delay." in q.name}
    assert set(tiers) == {"p.tasks.delay.1s", "p.tasks.delay.2s", "p.tasks.delay.4s", "p.tasks.delay.8s"}
    # no x-dead-letter-routing-key: a message returns with its own key, to its priority level
    assert tiers["p.tasks.delay.4s"] == {
        "x-queue-type": "quorum",
        "x-message-ttl": 4000,
        "x-dead-letter-exchange": "p.tasks.exchange",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    assert ("p.tasks.delay.tiers.exchange", "headers") in {(x.name, x.kind) for x in topo.exchanges}
    tier_bindings = {
        b.queue: dict(b.arguments) for b in topo.bindings if b.exchange == "p.tasks.delay.tiers.exchange"
    }
    assert tier_bindings["p.tasks.delay.4s"] == {"x-match": "all", "delay-tier": "4s"}
    assert topo.delay_hop("a", 0.3) is None
    assert topo.delay_hop("a", 0.7) == DelayHop(
        "p.tasks.delay.tiers.exchange", "a", 1.0, {"delay-tier": "1s"}
    )
    assert topo.delay_hop("a", 5.0) == DelayHop(
        "p.tasks.delay.tiers.exchange", "a", 4.0, {"delay-tier": "4s"}
    )
    hop = topo.delay_hop("a", 100.0, priority=7)
    assert hop == DelayHop("p.tasks.delay.tiers.exchange", "a@p7", 8.0, {"delay-tier": "8s"})
    assert topo.delay_hop("unknown", 5.0) is None


def test_plugin_mode_declares_a_delayed_message_exchange_instead_of_tiers() -> None:
    topo = build_topology({"default": ["a"]}, prefix="p.", delay_mode="plugin")
    delayed = [x for x in topo.exchanges if x.kind == "x-delayed-message"]
    assert [(x.name, dict(x.arguments)) for x in delayed] == [
        ("p.tasks.delay.exchange", {"x-delayed-type": "direct"})
    ]
    assert not [q for q in topo.queues if ".delay." in q.name]
    assert ("p.tasks.delay.exchange", "p.tasks.work.default", "a") in {
        (b.exchange, b.queue, b.routing_key) for b in topo.bindings
    }
    assert topo.delay_hop("a", 42.0) == DelayHop("p.tasks.delay.exchange", "a", 42.0)
    assert ("p.tasks.delay.exchange", "p.tasks.work.default.p3", "a@p3") in {
        (b.exchange, b.queue, b.routing_key) for b in topo.bindings
    }
