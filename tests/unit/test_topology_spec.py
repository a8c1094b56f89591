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
        "p.tasks.delay.tiers.exchange": "headers",
    }
    routes = {(b.exchange, b.queue, b.routing_key) for b in topo.bindings}
    assert ("p.tasks.exchange", "p.tasks.work.default", "a") in routes
    assert ("p.tasks.exchange", "p.tasks.work.heavy", "c") in routes
    assert ("p.tasks.dlx.exchange", "p.tasks.dlq.queue", "") in routes
    assert topo.queue_for("c") == "p.tasks.work.heavy" and topo.queue_for("zzz") is None


def test_the_parking_queue_is_a_quorum_queue_reached_by_its_name_alone() -> None:
    topo = build_topology({"default": ["a"]}, prefix="p.")
    assert topo.parking_queue == "p.tasks.dlq.parking"
    queues = {q.name: dict(q.arguments) for q in topo.queues}
    # quorum, no dead-lettering, no delivery limit: a parked message waits for an operator
    assert queues["p.tasks.dlq.parking"] == {"x-queue-type": "quorum"}
    # not bound anywhere: the DLQ consumer publishes to it through the default exchange
    assert not [b for b in topo.bindings if b.queue == topo.parking_queue]


def test_specs_are_immutable() -> None:
    topo = build_topology({"default": ["a"]})
    with pytest.raises(TypeError):
        topo.queues[0].arguments["x-queue-type"] = "classic"  # type: ignore[index]


def test_delivery_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="delivery_limit"):
        build_topology({"default": ["a"]}, delivery_limit=0)


def test_each_priority_has_its_own_quorum_queue_bound_by_type_and_level() -> None:
    topo = build_topology({"default": ["a"], "heavy": ["c"]}, prefix="p.")
    default = topo.work_queue_for("a")
    assert default is not None
    assert default.queues == ("p.tasks.work.default", *(f"p.tasks.work.default.p{n}" for n in range(1, 10)))
    work = {q.name: dict(q.arguments) for q in topo.queues}
    assert work["p.tasks.work.default.p9"] == work["p.tasks.work.default"]  # quorum, DLX, delivery limit
    routes = {(b.exchange, b.queue, b.routing_key) for b in topo.bindings}
    assert ("p.tasks.exchange", "p.tasks.work.default", "a") in routes
    assert ("p.tasks.exchange", "p.tasks.work.default.p9", "a@p9") in routes
    assert ("p.tasks.exchange", "p.tasks.work.heavy.p4", "c@p4") in routes
    assert [topo.routing_key_for("a", p) for p in (0, 1, 9)] == ["a", "a@p1", "a@p9"]
    assert topo.queue_for("c", 4) == "p.tasks.work.heavy.p4" and topo.queue_for("c") == "p.tasks.work.heavy"


def test_fewer_priority_levels_split_the_range_into_equal_bands() -> None:
    topo = build_topology({"default": ["a"]}, priority_levels=3)
    assert [topo.level_of(p) for p in range(10)] == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert topo.work_queues[0].queues == (
        "tasks.work.default",
        "tasks.work.default.p4",
        "tasks.work.default.p7",
    )
    # a queue is named by its band's lowest priority, the same whatever the number of levels
    assert topo.routing_key_for("a", 5) == "a@p4" and topo.queue_for("a", 9) == "tasks.work.default.p7"
    single = build_topology({"default": ["a"]}, priority_levels=1)
    assert single.work_queues[0].queues == ("tasks.work.default",)
    assert {single.routing_key_for("a", p) for p in range(10)} == {"a"}
    with pytest.raises(ValueError, match="priority_levels"):
        build_topology({"default": ["a"]}, priority_levels=11)


def test_an_unknown_delay_mode_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="delay_mode must be 'ttl' or 'plugin', got 'cron'"):
        build_topology({"default": ["a"]}, delay_mode="cron")
