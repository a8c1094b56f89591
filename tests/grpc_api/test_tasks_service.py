"""The gRPC front door against real RabbitMQ and PostgreSQL, called by a real gRPC client over a
port: a task's life, every status code of the error table named by a test, health checking and
reflection, listing, cancelling."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from taskplatform.grpc_api.server import TASKS_SERVICE, GrpcServer
from taskplatform.grpc_api.v1 import tasks_pb2 as pb
from taskplatform.grpc_api.v1 import tasks_pb2_grpc as pb_grpc
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.tasks.registry import ExecutableRegistry
from tests.api.tokens import SECRET, bearer, token
from tests.support.api import client_of, served
from tests.support.runtime import eventually
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

ALICE = token("alice")
BOB = token("bob")
CAROL = token("carol")  # only the crafted-input test submits as carol
ADA = token("ada", "admin")
NOBODY = token("nora", "viewer")  # a role below submitter
WAITING = (pb.TASK_STATUS_QUEUED, pb.TASK_STATUS_RUNNING, pb.TASK_STATUS_RETRYING)


def auth(value: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {value}"),)


class Front:
    """One process serving HTTP and gRPC over one runtime (a worker consuming in it too)."""

    def __init__(self, runtime: Runtime, http: httpx.AsyncClient, channel: grpc.aio.Channel) -> None:
        self.runtime = runtime
        self.http = http
        self.channel = channel
        self.stub = pb_grpc.TasksStub(channel)

    async def create(self, who: str = ALICE, **fields: Any) -> pb.CreateTaskResponse:
        fields.setdefault("task_type", "test_noop")
        request = pb.CreateTaskRequest(**fields)
        response: pb.CreateTaskResponse = await self.stub.CreateTask(request, metadata=auth(who), timeout=10)
        return response

    async def status(self, task_id: str, who: str = ALICE) -> pb.TaskStatusReply:
        reply: pb.TaskStatusReply = await self.stub.GetTaskStatus(
            pb.GetTaskRequest(task_id=task_id), metadata=auth(who), timeout=10
        )
        return reply

    async def ended(self, task_id: str, who: str = ALICE) -> pb.TaskStatusReply:
        async def done() -> bool:
            reply = await self.status(task_id, who)
            return reply.status not in WAITING

        await eventually(done, timeout=20)
        return await self.status(task_id, who)


Serve = Callable[..., contextlib.AbstractAsyncContextManager[Front]]


@pytest.fixture
def serve(
    make_settings: Callable[..., PlatformSettings],
    registry: ExecutableRegistry,
    rabbitmq: Any,
    postgres_database_url: str,
) -> Serve:
    """``async with serve(**settings) as front``: JWT authentication (HS256, SECRET), PostgreSQL."""

    @contextlib.asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[Front]:
        values: dict[str, Any] = {
            "auth": "jwt",
            "jwt_secret": SECRET,
            "store_url": postgres_database_url,
            "grpc_port": 0,
        }
        consume = overrides.pop("consume", True)
        values.update(overrides)
        runtime = Runtime(
            make_settings(**values), role="dev", registry=registry, consume=consume, relay=False
        )
        async with served(runtime) as app, client_of(app) as http:
            server = GrpcServer(runtime)
            port = await server.start()
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    yield Front(runtime, http, channel)
            finally:
                await server.stop(grace=1)

    return run


@pytest.fixture
async def front(serve: Serve) -> AsyncIterator[Front]:
    async with serve() as f:
        yield f


async def refused(call: Any) -> grpc.aio.AioRpcError:
    """The error a call ends with (it must end with one)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest field violations the error's status details carry."""
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status in the trailers"
    found: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.update({v.field: v.description for v in bad.field_violations})
    return found


def _moment(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


# ------------------------------------------------------------------ a task's life
async def test_a_task_created_over_grpc_completes_and_reads_as_http_reads_it(front: Front) -> None:
    created = await front.create(parameters_json=json.dumps({"value": 2**60}), tags=["grpc"], priority=3)
    assert created.created and created.published and created.status == pb.TASK_STATUS_QUEUED

    reply = await front.ended(created.task_id)
    assert reply.status == pb.TASK_STATUS_COMPLETED and not reply.HasField("error")

    task = await front.stub.GetTask(pb.GetTaskRequest(task_id=created.task_id), metadata=auth(ALICE))
    http = (await front.http.get(f"/api/v1/tasks/{created.task_id}", headers=bearer(ALICE))).json()
    as_dict = json_format.MessageToDict(task, preserving_proto_field_name=True)
    assert task.id == http["id"] and task.user_id == http["user_id"] == "alice"
    assert pb.TaskStatus.Name(task.status) == "TASK_STATUS_" + http["status"]
    for name in ("task_type", "retry_count", "priority", "tags", "version", "replays", "cancel_requested"):
        value = getattr(task, name)
        assert (list(value) if name == "tags" else value) == http[name], name
    assert json_format.MessageToDict(task.metadata) == http["metadata"] == {}
    # an integer beyond a double's range stays exact over HTTP, and a Struct carries it as text
    assert http["parameters"]["value"] == http["result"]["value"] == 2**60
    assert as_dict["parameters"]["value"] == as_dict["result"]["value"] == str(2**60)
    for name in ("created_at", "updated_at", "started_at", "completed_at"):
        expected = _moment(http[name])
        assert expected is not None, name
        moment = getattr(task, name).ToDatetime(tzinfo=expected.tzinfo)
        assert abs((moment - expected).total_seconds()) < 0.001, name
    assert reply.task_id == task.id and reply.result == task.result and reply.updated_at == task.updated_at


async def test_an_idempotent_create_returns_the_first_task(front: Front) -> None:
    first = await front.create(idempotency_key="k-1", parameters_json="{}")
    again = await front.create(idempotency_key="k-1", parameters_json="{}")
    assert again.task_id == first.task_id and first.created and not again.created


# ------------------------------------------------------------------ status codes
async def test_invalid_argument_names_the_fields_in_a_bad_request(front: Front) -> None:
    unknown = await refused(front.create(task_type="no_such_type"))
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown task type 'no_such_type'" in unknown.details() and "task_type" in violations(unknown)

    bad_priority = await refused(front.create(priority=99))
    assert bad_priority.code() == grpc.StatusCode.INVALID_ARGUMENT and "priority" in violations(bad_priority)

    struct = pb.CreateTaskRequest(task_type="test_flaky")
    struct.parameters.update({"fail_times": "many"})
    bad_params = await refused(front.stub.CreateTask(struct, metadata=auth(ALICE)))
    assert bad_params.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_params.details().startswith("invalid parameters: parameters.fail_times")
    assert "parameters.fail_times" in violations(bad_params)

    not_json = await refused(front.create(parameters_json="[1, 2"))
    assert not_json.code() == grpc.StatusCode.INVALID_ARGUMENT and "parameters_json" in violations(not_json)
    not_object = await refused(front.create(parameters_json="[1, 2]"))
    assert "a JSON object is needed" in violations(not_object)["parameters_json"]

    long_id = await refused(front.status("x" * 65))
    assert long_id.code() == grpc.StatusCode.INVALID_ARGUMENT and "task_id" in violations(long_id)
    listing = front.stub.ListTasks
    bad_cursor = await refused(listing(pb.ListTasksRequest(cursor="nonsense"), metadata=auth(ALICE)))
    assert bad_cursor.code() == grpc.StatusCode.INVALID_ARGUMENT and "cursor" in violations(bad_cursor)
    big_limit = await refused(listing(pb.ListTasksRequest(limit=501), metadata=auth(ALICE)))
    assert big_limit.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit" in violations(big_limit)


async def test_another_users_task_is_not_found_with_the_message_of_a_missing_one(front: Front) -> None:
    bobs = (await front.create(BOB)).task_id
    theirs = await refused(front.status(bobs, ALICE))
    missing = await refused(front.status("no-such-task", ALICE))
    assert theirs.code() == missing.code() == grpc.StatusCode.NOT_FOUND
    assert theirs.details() == f"task {bobs!r} not found"
    assert missing.details() == "task 'no-such-task' not found"
    cancel = await refused(front.stub.CancelTask(pb.CancelTaskRequest(task_id=bobs), metadata=auth(ALICE)))
    assert cancel.code() == grpc.StatusCode.NOT_FOUND
    assert (await front.status(bobs, ADA)).status != pb.TASK_STATUS_CANCELLED  # untouched


async def test_unauthenticated_without_or_with_a_bad_token(front: Front) -> None:
    none = await refused(front.stub.GetTaskStatus(pb.GetTaskRequest(task_id="x")))
    assert none.code() == grpc.StatusCode.UNAUTHENTICATED and "authentication required" in none.details()
    expired = await refused(front.status("x", token("alice", exp=1)))
    assert expired.code() == grpc.StatusCode.UNAUTHENTICATED
    assert expired.details().startswith("invalid bearer token (token expired)")
    basic = (("authorization", "Basic abc"),)
    garbled = await refused(front.stub.GetTaskStatus(pb.GetTaskRequest(task_id="x"), metadata=basic))
    assert garbled.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_permission_denied_for_a_role_below_submitter_and_for_another_users_submission(
    front: Front,
) -> None:
    low = await refused(front.create(NOBODY))
    assert low.code() == grpc.StatusCode.PERMISSION_DENIED and "this needs the submitter" in low.details()
    for_bob = await refused(front.create(ALICE, user_id="bob"))
    assert for_bob.code() == grpc.StatusCode.PERMISSION_DENIED and "only an admin" in for_bob.details()
    by_admin = await front.create(ADA, user_id="bob")
    assert (await front.status(by_admin.task_id, BOB)).task_id == by_admin.task_id
    others = await refused(front.stub.ListTasks(pb.ListTasksRequest(user_id="bob"), metadata=auth(ALICE)))
    assert others.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_already_exists_when_a_key_comes_back_with_another_request(front: Front) -> None:
    await front.create(idempotency_key="k-2", parameters_json="{}")
    reused = await refused(front.create(idempotency_key="k-2", parameters_json="{}", tags=["other"]))
    assert reused.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "was used before with a different submission" in reused.details()


async def test_failed_precondition_when_cancelling_a_finished_task(front: Front) -> None:
    done = (await front.create(parameters_json="{}")).task_id
    await front.ended(done)
    late = await refused(front.stub.CancelTask(pb.CancelTaskRequest(task_id=done), metadata=auth(ALICE)))
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert late.details() == f"task {done!r} is already COMPLETED; it cannot be cancelled"


async def test_resource_exhausted_past_the_submit_rate_with_the_wait(serve: Serve) -> None:
    async with serve(api_submit_rate="2/minute", api_submit_burst=2) as front:
        await front.create(parameters_json="{}")
        await front.create(parameters_json="{}")
        limited = await refused(front.create(parameters_json="{}"))
        assert limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many submissions" in limited.details()
        status = rpc_status.from_call(limited)
        assert status is not None
        retry = error_details_pb2.RetryInfo()
        assert any(d.Unpack(retry) for d in status.details) and retry.retry_delay.seconds >= 1
        # HTTP counts in the same bucket: alice is limited there too
        r = await front.http.post(
            "/api/v1/tasks", json={"task_type": "test_noop", "parameters": {}}, headers=bearer(ALICE)
        )
        assert r.status_code == 429


async def test_unavailable_when_the_store_is_cut(serve: Serve, own_postgres_database_url: str) -> None:
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.open()
    url = own_postgres_database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    try:
        async with serve(store_url=url) as front:
            task_id = (await front.create(parameters_json="{}")).task_id
            await proxy.close()
            down = await refused(front.status(task_id))
            assert down.code() == grpc.StatusCode.UNAVAILABLE
            assert down.details() == "the task store is unavailable; retry later"
            await proxy.open()

            async def back() -> bool:
                try:
                    await front.status(task_id)
                except grpc.aio.AioRpcError:
                    return False
                return True

            await eventually(back, timeout=20)
    finally:
        await proxy.close()


async def test_crafted_input_is_refused_as_invalid_or_too_large_and_stores_nothing(front: Front) -> None:
    nul = await refused(front.create(CAROL, task_type="test_noop", tags=["a\x00b"]))
    assert nul.code() == grpc.StatusCode.INVALID_ARGUMENT
    nul_key = await refused(front.create(CAROL, idempotency_key="k\x00"))
    assert nul_key.code() == grpc.StatusCode.INVALID_ARGUMENT and "idempotency_key" in violations(nul_key)
    deep = "[" * 5000 + "]" * 5000
    nested = await refused(front.create(CAROL, parameters_json=f'{{"x": {deep}}}'))
    assert nested.code() == grpc.StatusCode.INVALID_ARGUMENT
    # 2 MiB: past GRPC_MAX_MESSAGE_BYTES (1 MiB, HTTP's body limit), within gRPC's own 4 MiB
    huge = await refused(front.create(CAROL, parameters_json=json.dumps({"x": "y" * (2 * 1_048_576)})))
    assert huge.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    not_a_number = pb.CreateTaskRequest(task_type="test_noop")
    not_a_number.parameters.update({"value": float("nan")})
    nan = await refused(front.stub.CreateTask(not_a_number, metadata=auth(CAROL)))
    assert nan.code() == grpc.StatusCode.INVALID_ARGUMENT and "parameters" in violations(nan)
    odd_status = await refused(front.stub.ListTasks(pb.ListTasksRequest(status=99), metadata=auth(CAROL)))
    assert odd_status.code() == grpc.StatusCode.INVALID_ARGUMENT and "status" in violations(odd_status)
    mode = pb.TaskTarget(mode="sideways")
    mode.labels.update({"role": "db"})
    bad_target = await refused(front.create(CAROL, target=mode))
    assert bad_target.code() == grpc.StatusCode.INVALID_ARGUMENT and "target.mode" in violations(bad_target)
    listed = await front.stub.ListTasks(pb.ListTasksRequest(user_id="carol"), metadata=auth(ADA))
    assert len(listed.tasks) == 0  # nothing of the above was stored


# ------------------------------------------------------------------ listing, cancelling
async def test_list_tasks_pages_with_a_cursor_and_shows_a_submitter_its_own(front: Front) -> None:
    mine = [(await front.create(tags=["page"], parameters_json="{}")).task_id for _ in range(5)]
    await front.create(BOB, tags=["page"], parameters_json="{}")
    seen: list[str] = []
    cursor = ""
    while True:
        page = await front.stub.ListTasks(
            pb.ListTasksRequest(tags=["page"], limit=2, cursor=cursor, summary=True), metadata=auth(ALICE)
        )
        assert len(page.tasks) <= 2 and all(not t.HasField("parameters") for t in page.tasks)
        seen += [t.id for t in page.tasks]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert seen == list(reversed(mine))  # newest first, alice's only
    everyone = await front.stub.ListTasks(pb.ListTasksRequest(tags=["page"]), metadata=auth(ADA))
    assert len(everyone.tasks) == 6


async def test_cancel_a_running_task_asks_its_worker_and_it_ends_cancelled(front: Front) -> None:
    slow = (await front.create(task_type="test_cooperative", parameters_json="{}")).task_id

    async def running() -> bool:
        return (await front.status(slow)).status == pb.TASK_STATUS_RUNNING

    await eventually(running, timeout=20)
    answer = await front.stub.CancelTask(pb.CancelTaskRequest(task_id=slow), metadata=auth(ALICE))
    assert answer.cancel_requested and answer.status == pb.TASK_STATUS_RUNNING
    assert (await front.ended(slow)).status == pb.TASK_STATUS_CANCELLED


# ------------------------------------------------------------------ health, reflection
async def test_health_checking_and_reflection_answer(front: Front) -> None:
    health = health_pb2_grpc.HealthStub(front.channel)
    for service in ("", TASKS_SERVICE):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    unknown = await refused(health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND

    stub = reflection_pb2_grpc.ServerReflectionStub(front.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    names: list[str] = []
    async for response in stub.ServerReflectionInfo(iter([request]), timeout=5):
        names += [s.name for s in response.list_services_response.service]
    assert TASKS_SERVICE in names and "grpc.health.v1.Health" in names
    assert TASKS_SERVICE == "taskplatform.v1.Tasks"


# ------------------------------------------------------------------ watching
async def _updates(front: Front, task_id: str, who: str = ALICE) -> AsyncIterator[pb.TaskUpdate]:
    call = front.stub.WatchTask(pb.WatchTaskRequest(task_id=task_id), metadata=auth(who), timeout=60)
    async for update in call:
        yield update


async def test_watch_streams_queued_then_running_then_completed_and_ends_with_the_result(
    serve: Serve, make_runtime: Callable[..., Runtime], postgres_database_url: str
) -> None:
    async with serve(consume=False) as front:
        task_id = (await front.create(parameters_json='{"value": 5, "sleep": 0.3}')).task_id
        seen: list[pb.TaskUpdate] = []
        worker = make_runtime(role="worker", store_url=postgres_database_url, auth="jwt", jwt_secret=SECRET)
        async for update in _updates(front, task_id):
            seen.append(update)
            if len(seen) == 1:  # the task is QUEUED and watched: now a worker may take it
                assert update.event == "snapshot" and update.status == pb.TASK_STATUS_QUEUED
                assert update.task.id == task_id
                await worker.start()
        await worker.stop(grace=2)
    statuses = [pb.TaskStatus.Name(u.status) for u in seen]
    distinct = [s for i, s in enumerate(statuses) if i == 0 or s != statuses[i - 1]]
    assert distinct == ["TASK_STATUS_QUEUED", "TASK_STATUS_RUNNING", "TASK_STATUS_COMPLETED"], statuses
    assert "started" in [u.event for u in seen] and "completed" in [u.event for u in seen]
    assert [u.sequence for u in seen] == sorted(u.sequence for u in seen)  # never goes back
    last = seen[-1]
    assert last.event == "snapshot" and json_format.MessageToDict(last.task.result) == {"value": 5}


async def test_watch_ends_without_events_from_the_store_alone(
    serve: Serve, make_runtime: Callable[..., Runtime], postgres_database_url: str
) -> None:
    async with serve(consume=False) as front:
        task_id = (await front.create(parameters_json="{}")).task_id
        worker = make_runtime(role="worker", store_url=postgres_database_url, events_bridge_enabled=False)
        seen: list[pb.TaskUpdate] = []
        async for update in _updates(front, task_id):
            seen.append(update)
            if len(seen) == 1:
                await worker.start()
        await worker.stop(grace=2)
    assert [u.event for u in seen] == ["snapshot", "snapshot"]
    assert seen[-1].status == pb.TASK_STATUS_COMPLETED


async def test_watching_another_users_task_is_not_found(front: Front) -> None:
    bobs = (await front.create(BOB)).task_id
    theirs = await refused(_first(_updates(front, bobs, ALICE)))
    assert theirs.code() == grpc.StatusCode.NOT_FOUND and theirs.details() == f"task {bobs!r} not found"
    nobody = front.stub.WatchTask(pb.WatchTaskRequest(task_id=bobs))
    none = await refused(_first(nobody))
    assert none.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_watching_a_finished_task_sends_its_state_and_ends(front: Front) -> None:
    done = (await front.create(parameters_json="{}")).task_id
    await front.ended(done)
    seen = [u async for u in _updates(front, done)]
    assert len(seen) == 1 and seen[0].event == "snapshot" and seen[0].status == pb.TASK_STATUS_COMPLETED


async def _first(stream: Any) -> Any:
    async for item in stream:
        return item
    return None


async def test_a_struct_nested_past_protobufs_limit_is_invalid_not_internal(front: Front) -> None:
    """A CreateTaskRequest whose Struct nests 200 levels (protobuf parses at most 100), written
    byte by byte: no protobuf library builds one."""
    body = pb.CreateTaskRequest(task_type="test_noop").SerializeToString() + _field(2, _struct(200))
    call = front.channel.unary_unary("/taskplatform.v1.Tasks/CreateTask")
    deep = await refused(call(body, metadata=auth(ALICE), timeout=10))
    assert deep.code() == grpc.StatusCode.INVALID_ARGUMENT, deep
    assert "cannot be parsed" in deep.details()


def _struct(depth: int) -> bytes:
    """A Struct ``{"a": {"a": ... {}}}`` ``depth`` levels deep, encoded."""
    inner = b""
    for _ in range(depth):
        value = _field(5, inner)  # Value.struct_value
        entry = _field(1, b"a") + _field(2, value)  # map entry: key, value
        inner = _field(1, entry)  # Struct.fields
    return inner


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte = n & 0x7F
        n >>= 7
        if not n:
            return out + bytes([byte])
        out += bytes([byte | 0x80])


async def test_every_call_is_counted_by_method_and_code_from_zero(front: Front) -> None:
    registry = front.runtime.metrics.registry

    def handled(method: str, code: str, kind: str = "unary") -> float | None:
        labels = {"grpc_type": kind, "grpc_service": TASKS_SERVICE, "grpc_method": method, "grpc_code": code}
        return registry.get_sample_value("grpc_server_handled_total", labels)

    assert handled("CancelTask", "FAILED_PRECONDITION") == 0.0  # there before any call
    assert handled("WatchTask", "OK", "server_stream") == 0.0
    created = await front.create(parameters_json="{}")
    await refused(front.status("no-such-task"))
    await front.ended(created.task_id)
    [_ async for _ in _updates(front, created.task_id)]
    await refused(front.stub.GetTaskStatus(pb.GetTaskRequest(task_id="x")))  # no token
    assert handled("CreateTask", "OK") == 1.0
    assert handled("GetTaskStatus", "NOT_FOUND") == 1.0
    assert handled("GetTaskStatus", "UNAUTHENTICATED") == 1.0
    assert (handled("GetTaskStatus", "OK") or 0) >= 1.0
    assert handled("WatchTask", "OK", "server_stream") == 1.0
    started = registry.get_sample_value(
        "grpc_server_started_total",
        {"grpc_type": "unary", "grpc_service": TASKS_SERVICE, "grpc_method": "CreateTask"},
    )
    assert started == 1.0
    count = registry.get_sample_value(
        "grpc_server_handling_seconds_count",
        {"grpc_type": "unary", "grpc_service": TASKS_SERVICE, "grpc_method": "CreateTask"},
    )
    assert count == 1.0


async def test_a_body_nested_deeper_than_a_struct_carries_comes_as_json_text(front: Front) -> None:
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(40):  # stored fine (64 levels at most), 120 protobuf levels as a Struct
        deep = {"a": deep}
    r = await front.http.post(
        "/api/v1/tasks", json={"task_type": "test_noop", "metadata": deep}, headers=bearer(ALICE)
    )
    assert r.status_code == 201, r.text
    task_id = r.json()["task_id"]
    task = await front.stub.GetTask(pb.GetTaskRequest(task_id=task_id), metadata=auth(ALICE))
    assert not task.HasField("metadata") and json.loads(task.metadata_json) == deep
    listed = await front.stub.ListTasks(pb.ListTasksRequest(), metadata=auth(ALICE))
    assert task_id in [t.id for t in listed.tasks]  # the page parses too


async def test_a_submitter_sees_no_traceback_or_node_an_operator_does_as_over_http(front: Front) -> None:
    failed = (await front.create(task_type="test_boom", parameters_json='{"value": 3}')).task_id
    await front.ended(failed)
    mine = await front.stub.GetTask(pb.GetTaskRequest(task_id=failed), metadata=auth(ALICE))
    ops = await front.stub.GetTask(
        pb.GetTaskRequest(task_id=failed), metadata=auth(token("olga", "operator"))
    )
    assert mine.error_info.message == ops.error_info.message == "boom 3"
    assert not mine.error_info.HasField("traceback") and not mine.error_info.HasField("node_id")
    assert "ValueError" in ops.error_info.traceback and ops.error_info.node_id
    http = (await front.http.get(f"/api/v1/tasks/{failed}", headers=bearer(ALICE))).json()["error_info"]
    assert http["traceback"] is None and http["node_id"] is None
    listed = await front.stub.ListTasks(pb.ListTasksRequest(task_type="test_boom"), metadata=auth(ALICE))
    assert all(not t.error_info.HasField("traceback") for t in listed.tasks)


async def test_grpc_submissions_and_cancels_are_in_the_audit_log(front: Front) -> None:
    task_id = (await front.create(task_type="test_cooperative", parameters_json="{}")).task_id
    await front.stub.CancelTask(pb.CancelTaskRequest(task_id=task_id), metadata=auth(ALICE))
    r = await front.http.get(
        "/api/v1/audit", params={"task_id": task_id}, headers=bearer(token("olga", "operator"))
    )
    assert r.status_code == 200, r.text
    actions = sorted((e["actor"], e["action"], e["outcome"]) for e in r.json()["items"])
    assert actions == [("alice", "cancel", "ok"), ("alice", "submit", "ok")]
