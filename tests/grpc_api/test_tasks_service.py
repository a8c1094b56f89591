"""The gRPC front door against real RabbitMQ and PostgreSQL, called by a real gRPC client over a
port: a task's life, every status code of the error table named by a test, health checking and
reflection, listing, cancelling, redaction and the audit log."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from taskplatform.grpc_api.server import TASKS_SERVICE
from taskplatform.grpc_api.v1 import tasks_pb2 as pb
from tests.api.tokens import bearer, token
from tests.grpc_api.front import (
    ADA,
    ALICE,
    BOB,
    CAROL,
    NOBODY,
    Front,
    Serve,
    auth,
    moment,
    refused,
    violations,
)
from tests.support.runtime import eventually
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


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
        expected = moment(http[name])
        assert expected is not None, name
        sent = getattr(task, name).ToDatetime(tzinfo=expected.tzinfo)
        assert abs((sent - expected).total_seconds()) < 0.001, name
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
