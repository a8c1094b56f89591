"""The gRPC load of ``bench_grpc``: generator processes, each with its own ``grpc.aio`` channels,
driving concurrent ``CreateTask`` calls back to back (closed loop); their tallies merged.

A generator process is ``python -m tests.bench.grpc_load``: it reads its spec (one JSON line) on
stdin, says ``ready`` once its channels are connected, reads the start time (a wall-clock line),
and prints its tally (one JSON line) on stdout. The processes are driven by
``generators.drive_generators``, as the HTTP generators are.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import struct_pb2

from taskplatform.grpc_api.v1 import tasks_pb2 as pb
from taskplatform.grpc_api.v1 import tasks_pb2_grpc as pb_grpc
from tests.bench.generators import drive_generators
from tests.bench.harness import run_bench
from tests.bench.procfs import proc_cpu

#: Each call's deadline: far above any latency of a healthy run, so a DEADLINE_EXCEEDED means
#: the server stalled.
CALL_TIMEOUT_S = 30.0


def create_request(n: int) -> Any:
    """The CreateTask request of task ``n``: ``bench_noop`` with ``{"n": n}`` as a Struct."""
    parameters = struct_pb2.Struct()
    parameters.update({"n": n})
    return pb.CreateTaskRequest(task_type="bench_noop", parameters=parameters)


def open_channel(target: str) -> grpc.aio.Channel:
    """A channel of its own connection (a local subchannel pool: channels to one target would
    otherwise share one)."""
    return grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


async def generator_process() -> None:
    """One generator process: ``streams`` concurrent CreateTask loops over ``channels``
    channels until the deadline."""
    loop = asyncio.get_running_loop()
    spec = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    channels = [open_channel(spec["target"]) for _ in range(spec["channels"])]
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), 30)
    stubs = [pb_grpc.TasksStub(channel) for channel in channels]  # type: ignore[no-untyped-call]
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    unpublished = 0
    next_n = spec["index"] * 1_000_000_000
    print("ready", flush=True)
    start_wall = float(await loop.run_in_executor(None, sys.stdin.readline))
    await asyncio.sleep(max(0.0, start_wall - time.time()))
    cpu_before, start = proc_cpu(os.getpid()), time.perf_counter()
    deadline = start + spec["duration"]

    async def stream(stub: Any) -> None:
        nonlocal next_n, unpublished
        while time.perf_counter() < deadline:
            request = create_request(next_n)
            next_n += 1
            sent = time.perf_counter()
            try:
                answer = await stub.CreateTask(request, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
                latencies.append((time.perf_counter() - sent) * 1000)
                await asyncio.sleep(0.05)  # a server that refuses calls: do not spin
                continue
            latencies.append((time.perf_counter() - sent) * 1000)
            codes["OK"] += 1
            unpublished += 0 if answer.published else 1

    await asyncio.gather(*(stream(stubs[i % len(stubs)]) for i in range(spec["streams"])))
    elapsed = time.perf_counter() - start
    cpu = proc_cpu(os.getpid()) - cpu_before
    for channel in channels:
        await channel.close()
    out = {
        "latencies": latencies,
        "codes": dict(codes),
        "unpublished": unpublished,
        "elapsed_s": elapsed,
        "cpu_s": cpu,
    }
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


@dataclass
class GrpcRun:
    """The merged tallies of every generator process: each call's latency (ms), the calls by
    status code, the accepted tasks stored but not published, the load's wall time, and the
    CPU each process group spent meanwhile."""

    latencies: list[float]
    codes: Counter[str]
    unpublished: int
    elapsed_s: float
    cpu: dict[str, float]

    @property
    def accepted(self) -> int:
        return self.codes["OK"]


async def run_grpc_generators(
    target: str,
    *,
    groups: dict[str, list[int]],
    generators: int,
    streams: int,
    channels: int,
    duration: float,
    timeout: float = 900.0,
) -> GrpcRun:
    """Drive the gRPC server at ``target`` from ``generators`` processes with ``streams``
    concurrent calls in all, each process over ``channels`` connections of its own, for
    ``duration`` seconds. ``groups`` (name → pids) are the processes whose CPU to account; the
    generators are added as ``load generator``."""
    specs = [
        {
            "index": index,
            "target": target,
            "streams": max(1, streams // generators + (1 if index < streams % generators else 0)),
            "channels": channels,
            "duration": duration,
        }
        for index in range(generators)
    ]
    results, spent = await drive_generators("tests.bench.grpc_load", specs, groups=groups, timeout=timeout)
    spent["load generator"] = sum(r["cpu_s"] for r in results)
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    for r in results:
        latencies.extend(r["latencies"])
        codes.update(r["codes"])
    return GrpcRun(
        latencies,
        codes,
        unpublished=sum(r["unpublished"] for r in results),
        elapsed_s=max(r["elapsed_s"] for r in results),
        cpu=spent,
    )


if __name__ == "__main__":
    run_bench(generator_process())
