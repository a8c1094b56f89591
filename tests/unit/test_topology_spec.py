import pytest

from topology import build_topology


def test_work_queues_are_quorum_with_dlx_and_explicit_delivery_limit() -> None:
    topo = build_topology({"default": ["b", "a"], "heavy": ["c"]}, prefix="p.", delivery_limit=7)
    assert [wq.queue for wq in topo.work_queues] == ["p.tasks.work.default", "p.tasks.work.heavy"]
    work = {q.name: q for q in topo.queues}
    args = dict(work["p.tasks.work.default"].arguments)
    assert args == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "p.tasks.dlx.exchange",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": 7,
    }
    assert dict(work["p.tasks.dlq.queue"].arguments) == {"x-queue-type": "quorum"}
    kinds = {x.name: x.kind for x in topo.exchanges}
    assert kinds == {
        "p.tasks.exchange": "direct",
        "p.tasks.dlx.exchange": "fanout",
        "p.tasks.events.exchange": "topic",
    }
    routes = {(b.exchange, b.queue, b.routing_key) for b in topo.bindings}
    assert ("p.tasks.exchange", "p.tasks.work.default", "a") in routes
    assert ("p.tasks.exchange", "p.tasks.work.heavy", "c") in routes
    assert ("p.tasks.dlx.exchange", "p.tasks.dlq.queue", "") in routes
    assert topo.queue_for("c") == "p.tasks.work.heavy" and topo.queue_for("zzz") is None


def test_specs_are_immutable() -> None:
    topo = build_topology({"default": ["a"]})
    with pytest.raises(TypeError):
        topo.queues[0].arguments["x-queue-type"] = "classic"  # type: ignore[index]


def test_delivery_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="delivery_limit"):
        build_topology({"default": ["a"]}, delivery_limit=0)
