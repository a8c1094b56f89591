"""The gRPC front door as processes serve it: ``taskplatform grpc`` on its own (PostgreSQL, JWT)
beside a worker, ``taskplatform dev`` serving gRPC and HTTP together, a taken port, a drained
shutdown."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from taskplatform.grpc_api.server import TASKS_SERVICE
from taskplatform.grpc_api.v1 import tasks_pb2 as pb
from taskplatform.grpc_api.v1 import tasks_pb2_grpc as pb_grpc
from tests.api.tokens import SECRET, token
from tests.support.server import (
    ROOT,
    delete_topology_now,
    free_port,
    log_tail,
    platform_env,
    served_topology,
    serving,
    stop,
)
from tests.support.services import RABBITMQ_URL, require_rabbitmq

pytestmark = pytest.mark.integration

ALICE = (("authorization", f"Bearer {token('alice')}"),)


def wait_serving(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    """Until the server's health check says SERVING (fails with the log if it exits first)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            assert process.poll() is None, f"the server exited with {process.returncode}:\n{log_tail(log)}"
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=TASKS_SERVICE), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"not serving within {timeout:.0f}s:\n{log_tail(log)}"
            time.sleep(0.2)


def run_to_the_end(stub: pb_grpc.TasksStub) -> pb.TaskStatusReply:
    created = stub.CreateTask(pb.CreateTaskRequest(task_type="test_noop"), metadata=ALICE, timeout=10)
    deadline = time.monotonic() + 60
    while True:
        reply: pb.TaskStatusReply = stub.GetTaskStatus(
            pb.GetTaskRequest(task_id=created.task_id), metadata=ALICE, timeout=10
        )
        if reply.status == pb.TASK_STATUS_COMPLETED or time.monotonic() > deadline:
            return reply
        time.sleep(0.1)


@pytest.fixture
def env(own_postgres_database_url: str) -> Iterator[dict[str, str]]:
    require_rabbitmq()
    prefix = f"grpc{uuid.uuid4().hex[:8]}."
    yield platform_env(
        TASKPLATFORM_AUTH="jwt",
        TASKPLATFORM_JWT_SECRET=SECRET,
        TASKPLATFORM_AMQP_URL=RABBITMQ_URL,
        TASKPLATFORM_STORE_URL=own_postgres_database_url,
        TASKPLATFORM_TOPOLOGY_PREFIX=prefix,
        TASKPLATFORM_EXECUTOR_MODULES='["tests.support.executables"]',
        TASKPLATFORM_LOG_LEVEL="INFO",
        TASKPLATFORM_SHUTDOWN_GRACE_SECONDS="3",
    )
    delete_topology_now(served_topology(prefix))


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "taskplatform.cli", *command],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_the_grpc_command_serves_tasks_a_worker_runs_and_stops_cleanly_on_sigterm(
    env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    server = start(["grpc", "--port", str(port)], env, tmp_path / "grpc.log")
    worker = start(["worker"], env, tmp_path / "worker.log")
    try:
        wait_serving(port, server, tmp_path / "grpc.log")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = run_to_the_end(pb_grpc.TasksStub(channel))
        assert reply.status == pb.TASK_STATUS_COMPLETED, reply
    finally:
        stop(worker)
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
    log = (tmp_path / "grpc.log").read_text()
    assert code == 0, log[-3000:]
    assert f"gRPC serving on 127.0.0.1:{port}" in log and "draining gRPC calls" in log


def test_a_taken_port_stops_the_grpc_command_with_exit_1_naming_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start(["grpc", "--port", str(port)], env, tmp_path / "grpc.log")
        code = server.wait(timeout=60)
    log = (tmp_path / "grpc.log").read_text()
    assert code == 1, log[-3000:]
    assert f"error: the gRPC server cannot listen on 127.0.0.1:{port}" in log


def test_dev_serves_grpc_beside_http_over_one_runtime(env: dict[str, str], tmp_path: Path) -> None:
    grpc_port = free_port()
    log = tmp_path / "dev.log"
    headers = {"Authorization": f"Bearer {token('alice')}"}
    with serving("dev", env, log, args=["--grpc-port", str(grpc_port)], ready_headers=headers) as base:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            reply = run_to_the_end(pb_grpc.TasksStub(channel))
        assert reply.status == pb.TASK_STATUS_COMPLETED, reply
        seen = httpx.get(f"{base}/api/v1/tasks/{reply.task_id}", headers=headers, timeout=10)
        assert seen.status_code == 200 and seen.json()["status"] == "COMPLETED"
    assert f"gRPC serving on 127.0.0.1:{grpc_port}" in log.read_text()
