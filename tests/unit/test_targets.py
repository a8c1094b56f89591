"""Aimed tasks without a broker: the target model's rules, the submission checks and fan-out
(``TargetPlanner``), and the expiry of tasks whose node stayed away (``TargetExpiry``), on the
in-memory store with a runtime's real event bus."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from taskplatform import settings as settings_module
from taskplatform import targets as targets_module
from taskplatform.errors import StoreError, UnreachableTargetError
from taskplatform.models import BackgroundTask, OutboxStatus, TaskStatus
from taskplatform.models.reasons import DeadLetterReason
from taskplatform.models.target import MAX_TARGET_TIMEOUT_SECONDS, SelectorAnnouncement, TaskTarget
from taskplatform.models.worker import WorkerRecord, WorkerState
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.submission import SubmitRequest, TaskSubmitter
from taskplatform.targets import TargetExpiry, TargetPlanner, child_id, fan_out
from taskplatform.testing.broker import FakePublisher
from topology import build_topology
from topology.spec import selector_id

# --- the model --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({}, "either a node or labels"),
        ({"node": "a", "labels": {"role": "db"}}, "either a node or labels"),
        ({"labels": {}}, "at least one label"),
        ({"node": "a", "mode": "each"}, "mode 'each' needs labels"),
        ({"node": ""}, "at least 1 character"),
        ({"node": "a\nb"}, "should match pattern"),
        ({"node": "x" * 201}, "at most 200 characters"),
        ({"labels": {"role": "d b"}}, "the value is 1 to 63"),
        ({"labels": {"role": "db"}, "mode": "some"}, "'any' or 'each'"),
        ({"node": "a", "target_timeout": 0}, "greater than 0"),
        ({"node": "a", "target_timeout": MAX_TARGET_TIMEOUT_SECONDS + 1}, "less than or equal"),
        ({"node": "a", "target_timeout": "5"}, "valid number"),
        ({"node": "a", "where": "x"}, "Extra inputs"),
    ],
)
def test_a_target_names_one_place_plainly(target: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TaskTarget.model_validate(target)


def test_a_submission_carries_its_target_onto_the_task() -> None:
    request = SubmitRequest.model_validate(
        {"task_type": "t", "target": {"labels": {"role": "db"}, "mode": "each", "target_timeout": 30}}
    )
    assert request.target == TaskTarget(labels={"role": "db"}, mode="each", target_timeout=30.0)


# --- submission: checks and fan-out --------------------------------------------------------------


@pytest.fixture
async def runtime(make_settings: Callable[..., PlatformSettings]) -> AsyncIterator[Runtime]:
    """A runtime on the in-memory store; never connected (its store and bus only)."""
    rt = Runtime(make_settings(store_url="memory://"), role="api", consume=False)
    await rt.store.open()
    rt.bus.start()
    rt.marker.start()
    try:
        yield rt
    finally:
        await rt.marker.stop()
        await rt.bus.close()
        await rt.store.close()


def _record(
    runtime: Runtime,
    node: str,
    *,
    labels: dict[str, str] | None = None,
    task_types: list[str] | None = None,
    seen_ago: float = 0.0,
    state: WorkerState = WorkerState.ONLINE,
) -> WorkerRecord:
    seen = runtime.store.now() - timedelta(seconds=seen_ago)
    return WorkerRecord(
        node_id=node,
        host="h",
        pid=1,
        labels=labels or {},
        task_types=task_types if task_types is not None else ["generate_summary"],
        concurrency=4,
        version="1",
        started_at=seen,
        last_seen_at=seen,
        heartbeat_seconds=1.0,
        expires_at=seen + timedelta(seconds=3),
        state=state,
    )


def _task(runtime: Runtime, target: TaskTarget | None = None) -> BackgroundTask:
    request = SubmitRequest(task_type="generate_summary", parameters={"text": "x"}, target=target)
    return runtime.submitter.prepare(request)


async def test_a_node_target_needs_a_registered_node_serving_the_type(runtime: Runtime) -> None:
    await runtime.store.beat_worker(_record(runtime, "db-1", task_types=["other"]))
    planner = TargetPlanner(runtime.store)
    with pytest.raises(UnreachableTargetError) as unknown:
        await planner.plan([_task(runtime, TaskTarget(node="db-9"))])
    assert unknown.value.problems == [
        (0, "no worker node 'db-9' has registered: `GET /api/v1/workers` lists the nodes")
    ]
    with pytest.raises(
        UnreachableTargetError, match="does not serve 'generate_summary' \\(it serves: other\\)"
    ):
        await planner.plan([_task(runtime, TaskTarget(node="db-1"))])
    await runtime.store.beat_worker(_record(runtime, "db-2", task_types=[], state=WorkerState.STOPPED))
    with pytest.raises(UnreachableTargetError, match="it serves: nothing"):
        await planner.plan([_task(runtime, TaskTarget(node="db-2"))])


async def test_an_offline_node_is_a_target_its_queue_keeps_the_task(runtime: Runtime) -> None:
    await runtime.store.beat_worker(_record(runtime, "db-1", seen_ago=60, state=WorkerState.OFFLINE))
    aimed = _task(runtime, TaskTarget(node="db-1"))
    plain = _task(runtime)
    plan = await TargetPlanner(runtime.store).plan([aimed, plain])
    assert plan.stored == plan.published == [aimed, plain]


async def test_mode_any_needs_a_registered_worker_with_the_labels_serving_the_type(runtime: Runtime) -> None:
    planner = TargetPlanner(runtime.store)
    any_db = TaskTarget(labels={"role": "db"})
    with pytest.raises(UnreachableTargetError, match="no registered worker carries labels role=db"):
        await planner.plan([_task(runtime, any_db)])
    await runtime.store.beat_worker(_record(runtime, "db-1", labels={"role": "db"}, task_types=["other"]))
    with pytest.raises(UnreachableTargetError, match="no registered worker carries labels role=db"):
        await planner.plan([_task(runtime, any_db)])
    # an offline worker with the labels is enough: the selector's queue keeps the task for it
    await runtime.store.beat_worker(
        _record(runtime, "db-2", labels={"role": "db", "zone": "a"}, seen_ago=60, state=WorkerState.OFFLINE)
    )
    task = _task(runtime, any_db)
    plan = await planner.plan([task])
    assert plan.stored == plan.published == [task]
    assert task.target is not None and task.target.route(task.task_type) == (
        "@select:" + selector_id(task.task_type, {"role": "db"})
    )


async def test_each_fans_out_to_every_online_worker_with_the_labels_serving_the_type(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(targets_module, "WORKER_PAGE", 2)  # the registry is read page by page
    db = {"role": "db"}
    for node in ("db-1", "db-2", "db-3"):
        await runtime.store.beat_worker(_record(runtime, node, labels={**db, "zone": node}))
    await runtime.store.beat_worker(_record(runtime, "db-4", labels=db, task_types=["other"]))
    await runtime.store.beat_worker(_record(runtime, "db-5", labels=db, seen_ago=60))  # expired
    await runtime.store.beat_worker(_record(runtime, "web-1", labels={"role": "web"}))
    task = _task(runtime, TaskTarget(labels=db, mode="each", target_timeout=42.0))
    plan = await TargetPlanner(runtime.store).plan([task])
    parent, *children = plan.stored
    assert plan.published == children
    assert parent.id == task.id and parent.status is TaskStatus.RUNNING and parent.awaiting_children
    assert parent.outbox.status is OutboxStatus.PUBLISHED and parent.started_at is not None
    assert [c.target for c in children] == [
        TaskTarget(node=n, target_timeout=42.0) for n in ("db-1", "db-2", "db-3")
    ]
    assert [c.id for c in children] == [child_id(task.id, n) for n in ("db-1", "db-2", "db-3")]
    assert all(c.parent_task_id == task.id and c.parameters == task.parameters for c in children)
    assert len({c.id for c in children}) == 3 and child_id(task.id, "db-1") == children[0].id


async def test_each_refuses_labels_nobody_online_carries_and_a_fan_out_too_wide(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    planner = TargetPlanner(runtime.store)
    with pytest.raises(UnreachableTargetError, match="no online worker carries labels role=db,zone=a"):
        await planner.plan([_task(runtime, TaskTarget(labels={"zone": "a", "role": "db"}, mode="each"))])
    monkeypatch.setattr(targets_module, "MAX_FAN_OUT", 1)
    for node in ("db-1", "db-2"):
        await runtime.store.beat_worker(_record(runtime, node, labels={"role": "db"}))
    with pytest.raises(UnreachableTargetError, match="match 2 workers, more than 1"):
        await planner.plan([_task(runtime, TaskTarget(labels={"role": "db"}, mode="each"))])


async def test_a_request_whose_fan_outs_add_up_to_more_than_the_bound_is_refused_where_it_passes_it(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(targets_module, "MAX_FAN_OUT", 5)
    for node in ("db-1", "db-2"):
        await runtime.store.beat_worker(_record(runtime, node, labels={"role": "db"}))
    reads = 0
    list_workers = runtime.store.list_workers

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return await list_workers(*args, **kwargs)

    monkeypatch.setattr(runtime.store, "list_workers", counted)
    each = TaskTarget(labels={"role": "db"}, mode="each")
    plan = await TargetPlanner(runtime.store).plan([_task(runtime, each) for _ in range(2)])
    assert len(plan.published) == 4  # 2 x 2 children: within the bound
    assert reads == 1  # the same labels and type: the registry read once for the request
    with pytest.raises(UnreachableTargetError) as refused:
        await TargetPlanner(runtime.store).plan([_task(runtime, each) for _ in range(4)])
    assert [p for p, _ in refused.value.problems] == [2, 3]  # 2 + 2 fit; the third would make 6
    assert "with the 4 children of the request's earlier fan-outs that is more than 5" in str(refused.value)


async def test_every_aimed_task_at_fault_is_named_by_position(runtime: Runtime) -> None:
    await runtime.store.beat_worker(_record(runtime, "db-1"))
    tasks = [
        _task(runtime, TaskTarget(node="nowhere")),
        _task(runtime, TaskTarget(node="db-1")),
        _task(runtime, TaskTarget(labels={"role": "x"}, mode="each")),
    ]
    with pytest.raises(UnreachableTargetError) as refused:
        await TargetPlanner(runtime.store).plan(tasks)
    assert [p for p, _ in refused.value.problems] == [0, 2]


async def test_a_submitter_without_the_registry_refuses_aimed_tasks(runtime: Runtime) -> None:
    publisher = FakePublisher()
    submitter = TaskSubmitter(runtime.store, runtime.registry, publisher, runtime.marker, runtime.bus)
    with pytest.raises(UnreachableTargetError, match="no fleet registry"):
        await submitter.submit(
            SubmitRequest(task_type="generate_summary", parameters={"text": "x"}, target=TaskTarget(node="a"))
        )
    assert await runtime.store.count_by_status() == {} and publisher.published == []


async def test_a_fan_out_parent_is_stored_waiting_and_only_its_children_are_published(
    runtime: Runtime,
) -> None:
    publisher = FakePublisher()
    submitter = TaskSubmitter(
        runtime.store,
        runtime.registry,
        publisher,
        runtime.marker,
        runtime.bus,
        aggregator=runtime.aggregator,
        targets=TargetPlanner(runtime.store),
    )
    for node in ("db-1", "db-2"):
        await runtime.store.beat_worker(_record(runtime, node, labels={"role": "db"}))
    target = TaskTarget(labels={"role": "db"}, mode="each")
    submitted = await submitter.submit(
        SubmitRequest(task_type="generate_summary", parameters={"text": "x"}, target=target)
    )
    parent = await runtime.store.get(submitted.task.id)
    assert parent is not None and parent.status is TaskStatus.RUNNING and parent.awaiting_children
    assert submitted.task.status is TaskStatus.RUNNING and submitted.published
    assert parent.sub_task_status_summary is not None and parent.sub_task_status_summary.queued == 2
    assert sorted(p.task_id for p in publisher.published) == sorted(
        child_id(parent.id, n) for n in ("db-1", "db-2")
    )
    routed = {p.message.target.node for p in publisher.published if p.message and p.message.target}
    assert routed == {"db-1", "db-2"}


def test_a_fan_out_keeps_what_the_task_says_about_itself(
    make_settings: Callable[..., PlatformSettings],
) -> None:
    runtime = Runtime(make_settings(store_url="memory://"), role="api", consume=False)
    task = _task(runtime, TaskTarget(labels={"role": "db"}, mode="each")).model_copy(
        update={"priority": 7, "tags": ["a"], "metadata": {"k": "v"}, "user_id": "u1"}
    )
    worker = _record(runtime, "db-1", labels={"role": "db"})
    _parent, (child,) = fan_out(task, [worker])
    assert (child.priority, child.tags, child.metadata, child.user_id) == (7, ["a"], {"k": "v"}, "u1")


# --- expiry ----------------------------------------------------------------------------------------


async def _store_aimed(runtime: Runtime, node: str, *, timeout: float, waited: float) -> BackgroundTask:
    task = _task(runtime, TaskTarget(node=node, target_timeout=timeout))
    task = task.model_copy(update={"updated_at": runtime.store.now() - timedelta(seconds=waited)})
    await runtime.store.create(task)
    return task


async def test_expiry_fails_only_tasks_whose_node_stayed_away_past_their_timeout(runtime: Runtime) -> None:
    store = runtime.store
    await store.beat_worker(_record(runtime, "up"))
    await store.beat_worker(_record(runtime, "down", seen_ago=100, state=WorkerState.OFFLINE))
    on_live_node = await _store_aimed(runtime, "up", timeout=1, waited=500)
    not_yet = await _store_aimed(runtime, "down", timeout=200, waited=500)  # down 100 s < 200 s
    due = await _store_aimed(runtime, "down", timeout=50, waited=500)
    never_seen = await _store_aimed(runtime, "gone", timeout=10, waited=20)
    expiry = TargetExpiry(store, runtime.bus, node_id="sweeper")
    assert await expiry.expire() == 2 and expiry.expired == 2
    statuses = {t.id: (await store.get(t.id)).status for t in (on_live_node, not_yet, due, never_seen)}  # type: ignore[union-attr]
    assert statuses == {
        on_live_node.id: TaskStatus.QUEUED,
        not_yet.id: TaskStatus.QUEUED,
        due.id: TaskStatus.DEAD_LETTER,
        never_seen.id: TaskStatus.DEAD_LETTER,
    }
    dead = await store.get(due.id)
    assert dead is not None and dead.error_info is not None
    assert dead.error_info.reason == DeadLetterReason.TARGET_OFFLINE and dead.error_info.node_id == "sweeper"
    assert "worker node 'down' is offline since" in dead.error_info.message
    gone = await store.get(never_seen.id)
    assert gone is not None and gone.error_info is not None and "'gone' is gone" in gone.error_info.message
    records = {r.task_id: r.reason for r in (await store.list_dead_letters()).items}
    assert records == {due.id: "target-offline", never_seen.id: "target-offline"}
    assert await expiry.expire() == 0  # nothing left to fail


async def test_expiry_reaches_every_waiting_task_however_many_older_ones_wait_for_a_live_node(
    runtime: Runtime,
) -> None:
    store = runtime.store
    await store.beat_worker(_record(runtime, "busy"))
    await store.beat_worker(_record(runtime, "down", seen_ago=100, state=WorkerState.OFFLINE))
    older = [await _store_aimed(runtime, "busy", timeout=1, waited=500) for _ in range(5)]
    due = await _store_aimed(runtime, "down", timeout=50, waited=500)
    assert due.created_at > older[-1].created_at  # behind every task of the live node
    expiry = TargetExpiry(store, runtime.bus, node_id="sweeper", batch=2)
    passes = [await expiry.expire() for _ in range(3)]
    assert passes == [0, 0, 1]  # two per pass, on from the last: the third pass reaches it
    assert (await store.get(due.id)).status is TaskStatus.DEAD_LETTER  # type: ignore[union-attr]
    assert {(await store.get(t.id)).status for t in older} == {TaskStatus.QUEUED}  # type: ignore[union-attr]
    assert [await expiry.expire() for _ in range(4)] == [0, 0, 0, 0]  # starts over, finds none due


async def test_expiry_leaves_a_task_its_node_claimed_meanwhile(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = runtime.store
    task = await _store_aimed(runtime, "gone", timeout=1, waited=10)
    listed = await store.list_aimed_waiting(limit=10)
    lease = store.now() + timedelta(seconds=60)
    assert await store.try_set_running(task.id, attempt=0, node_id="gone", lease_until=lease)

    async def stale(*, limit: int, after: object = None) -> list[BackgroundTask]:
        return listed  # what the pass read just before the node claimed it

    monkeypatch.setattr(store, "list_aimed_waiting", stale)
    assert await TargetExpiry(store, runtime.bus, node_id="sweeper").expire() == 0
    now = await store.get(task.id)
    assert now is not None and now.status is TaskStatus.RUNNING


async def test_expiry_still_fails_the_task_when_its_dead_letter_record_cannot_be_stored(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = runtime.store
    task = await _store_aimed(runtime, "gone", timeout=1, waited=10)

    async def refuse(record: object) -> None:
        raise StoreError("down")

    monkeypatch.setattr(store, "upsert_dead_letter", refuse)
    assert await TargetExpiry(store, runtime.bus, node_id="sweeper").expire() == 1
    failed = await store.get(task.id)
    assert failed is not None and failed.status is TaskStatus.DEAD_LETTER
    assert "dead-letter record could not be stored" in caplog.text


# --- topology ---------------------------------------------------------------------------------


@pytest.mark.parametrize("delay_mode", ["ttl", "plugin"])
def test_a_node_queue_is_a_work_queue_of_its_own_reached_by_the_node_key(delay_mode: str) -> None:
    topology = build_topology({"g": ["t"]}, prefix="p.", delay_mode=delay_mode)
    spec = topology.node_queue("db-1", expires_seconds=90.5)
    assert spec.name == "p.tasks.node.db-1"
    work_arguments = next(q.arguments for q in topology.queues if q.name == topology.work_queues[0].queue)
    assert dict(spec.arguments) == {**work_arguments, "x-expires": 90500}
    bindings = {(b.exchange, b.queue, b.routing_key) for b in topology.node_bindings("db-1")}
    expected = {("p.tasks.exchange", spec.name, "@node:db-1")}
    if delay_mode == "plugin":
        expected.add((topology.delay_exchange, spec.name, "@node:db-1"))
    assert bindings == expected
    hop = topology.delay_hop("t", 10.0, route="@node:db-1")
    assert hop is not None and hop.routing_key == "@node:db-1"
    # an aimed task's retries wait in the tiers even for a type this topology routes nowhere
    assert topology.delay_hop("unrouted", 10.0, route="@node:db-1") is not None
    assert topology.delay_hop("unrouted", 10.0) is None or delay_mode == "plugin"


@pytest.mark.parametrize("delay_mode", ["ttl", "plugin"])
def test_a_selector_has_a_queue_of_its_own_and_the_selectors_stream_is_declared(delay_mode: str) -> None:
    topology = build_topology({"g": ["t"]}, prefix="p.", delay_mode=delay_mode)
    selector = selector_id("t", {"zone": "b", "role": "db"})
    assert selector == selector_id("t", {"role": "db", "zone": "b"}) != selector_id("u", {"role": "db"})
    assert selector != selector_id("t", {"role": "db"}) and len(selector) == 24
    spec = topology.selector_queue(selector, expires_seconds=60)
    assert spec.name == f"p.tasks.select.{selector}" and spec.arguments["x-expires"] == 60000
    assert spec.arguments["x-queue-type"] == "quorum"
    keys = {(b.exchange, b.routing_key) for b in topology.selector_bindings(selector)}
    expected = {("p.tasks.exchange", f"@select:{selector}")}
    if delay_mode == "plugin":
        expected.add((topology.delay_exchange, f"@select:{selector}"))
    assert keys == expected
    stream = next(q for q in topology.queues if q.name == topology.selectors_stream)
    assert topology.selectors_stream == "p.tasks.selectors"
    assert dict(stream.arguments) == {"x-queue-type": "stream", "x-max-age": "7D"}


def test_a_selector_announcement_must_name_its_own_selector() -> None:
    good = SelectorAnnouncement(
        selector=selector_id("t", {"role": "db"}), task_type="t", labels={"role": "db"}
    )
    assert SelectorAnnouncement.model_validate_json(good.model_dump_json()) == good
    for bad in (
        {"selector": selector_id("t", {"role": "web"}), "task_type": "t", "labels": {"role": "db"}},
        {"selector": "not-an-id", "task_type": "t", "labels": {"role": "db"}},
        {"selector": selector_id("t", {}), "task_type": "t", "labels": {}},
    ):
        with pytest.raises(ValidationError):
            SelectorAnnouncement.model_validate(bad)


async def test_expiry_fails_tasks_for_labels_once_every_worker_with_them_stayed_away(
    runtime: Runtime,
) -> None:
    store = runtime.store
    db, web = {"role": "db"}, {"role": "web"}
    await store.beat_worker(_record(runtime, "db-1", labels=db, seen_ago=100, state=WorkerState.OFFLINE))
    await store.beat_worker(_record(runtime, "db-2", labels=db, seen_ago=300, state=WorkerState.OFFLINE))
    await store.beat_worker(_record(runtime, "web-1", labels=web))

    async def aimed(labels: dict[str, str], timeout: float) -> BackgroundTask:
        task = _task(runtime, TaskTarget(labels=labels, target_timeout=timeout))
        task = task.model_copy(update={"updated_at": store.now() - timedelta(seconds=500)})
        await store.create(task)
        return task

    waits = await aimed(db, 200)  # the last db worker left 100 s ago
    due = await aimed(db, 50)
    served = await aimed(web, 1)  # web-1 is online
    nobody = await aimed({"role": "cache"}, 10)
    assert await TargetExpiry(store, runtime.bus, node_id="sweeper").expire() == 2
    statuses = {t.id: (await store.get(t.id)).status for t in (waits, due, served, nobody)}  # type: ignore[union-attr]
    assert statuses == {
        waits.id: TaskStatus.QUEUED,
        due.id: TaskStatus.DEAD_LETTER,
        served.id: TaskStatus.QUEUED,
        nobody.id: TaskStatus.DEAD_LETTER,
    }
    dead = await store.get(due.id)
    assert dead is not None and dead.error_info is not None
    assert "every worker carrying labels role=db and serving 'generate_summary' is offline since" in (
        dead.error_info.message
    )


@pytest.mark.parametrize(
    ("node_id", "why"),
    [
        ("", "at least 1 character"),
        ("x" * 201, "at most 200 characters"),
        ("a\tb", "should match pattern"),
        ("a b", "should match pattern"),
        ("\u00e9" * 150, "should match pattern"),  # 300 bytes: past a queue name's 255
    ],
)
def test_a_node_id_that_could_not_name_its_queue_is_refused_at_start(node_id: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        PlatformSettings(node_id=node_id)
    with pytest.raises(ValidationError, match="should match pattern"):
        TaskTarget(node="\u00e9" * 150)
    assert PlatformSettings(node_id="db-1.example.org:7").node_id == "db-1.example.org:7"


def test_the_default_node_id_is_valid_whatever_the_host_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module.socket, "gethostname", lambda: "h\u00f4te n\u00b0" + "x" * 300)
    node_id = PlatformSettings().node_id
    assert node_id.startswith("h-te-n-xxx") and len(node_id) <= 200
