"""Bulk submit benchmark (not a test): prints figures, asserts nothing.

Starts ``taskplatform api`` (a process, ``--api-processes`` of them) on a fresh PostgreSQL
database and topology prefix, then ``--clients`` concurrent HTTP clients (httpx) post N no-op
tasks to ``POST /api/v1/tasks/bulk`` in requests of ``--batch`` (1,000) until all are accepted:
every task validated, stored (one insert per request) and published with confirms. No worker
runs: this measures accepting, not executing. It reports tasks/s accepted, request latency,
and the CPU per task of the API process(es), RabbitMQ and the rest of the machine
(PostgreSQL, kernel, the clients); then a raw aio-pika loop (confirmed publishes to a quorum
queue, manual-ack consumer) over the same broker, and the ratio of the two.

    .venv/bin/python -m tests.bench.bench_bulk --n 20000 --clients 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika
import httpx

from taskplatform.messaging.codec import encode
from taskplatform.models import BackgroundTask, TaskMessage, TaskStatus
from taskplatform.tasks.registry import ExecutableRegistry
from tests.bench.bench_pipeline import raw_aio_pika
from tests.bench.harness import AMQP_URL, bench_platform, pct
from tests.bench.noop import BenchNoop
from tests.bench.procfs import broker_pid, machine_busy, proc_cpu
from tests.support.server import free_port, platform_env, serving


def process_tree(root: int) -> list[int]:
    """``root`` and every process descended from it (uvicorn's worker processes)."""
    parents: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return sorted(tree)


def tree_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += proc_cpu(pid)
        except (OSError, ValueError, IndexError):
            continue  # gone
    return total


def api_pid(port: int) -> int:
    """The process listening on ``port`` (the API's supervisor, or its only process)."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                inode = fields[9]
    candidates = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == f"socket:[{inode}]" for fd in (proc / "fd").iterdir()):
                candidates.append(int(proc.name))
        except OSError:
            continue
    return min(candidates)  # uvicorn's workers share the socket of their parent


async def raw_publish_only(n: int, connections: int, body_bytes: int, batch: int = 500) -> dict[str, float]:
    """The broker's ceiling for accepting messages: ``n`` confirmed, persistent publishes of
    ``body_bytes`` to one quorum queue, no consumer, pipelined ``batch`` at a time over
    ``connections`` connections (one process, aio-pika). Messages/s and RabbitMQ's CPU per
    message; the queue is deleted afterwards."""
    queue_name = f"bench.ceiling.{uuid.uuid4().hex[:8]}"
    links = [await aio_pika.connect(AMQP_URL) for _ in range(connections)]
    channels = [await link.channel(publisher_confirms=True) for link in links]
    queue = await channels[0].declare_queue(queue_name, durable=True, arguments={"x-queue-type": "quorum"})
    body = b"x" * body_bytes
    broker = broker_pid()
    share = n // connections

    async def publish(channel: aio_pika.abc.AbstractChannel) -> None:
        for start in range(0, share, batch):
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key=queue_name,
                    )
                    for _ in range(min(batch, share - start))
                )
            )

    rabbit = proc_cpu(broker) if broker else 0.0
    started = time.perf_counter()
    await asyncio.gather(*(publish(channel) for channel in channels))
    seconds = time.perf_counter() - started
    rabbit = (proc_cpu(broker) if broker else 0.0) - rabbit
    await queue.delete(if_unused=False, if_empty=False)
    for link in links:
        await link.close()
    sent = share * connections
    return {"messages": sent, "msgs_per_s": sent / seconds, "rabbit_ms": rabbit / sent * 1000}


def bodies(n: int, batch: int, keyed: bool) -> list[bytes]:
    """The request bodies, built before the clock starts."""
    run = uuid.uuid4().hex[:8]
    out = []
    for start in range(0, n, batch):
        items = []
        for i in range(start, min(n, start + batch)):
            item: dict[str, object] = {"task_type": "bench_noop", "parameters": {"n": i}}
            if keyed:
                item["idempotency_key"] = f"{run}-{i}"
            items.append(item)
        out.append(json.dumps({"tasks": items}, separators=(",", ":")).encode())
    return out


async def post_all(base: str, requests: list[bytes], clients: int) -> tuple[float, list[float], int]:
    """Every body posted by ``clients`` concurrent clients; wall seconds, per-request ms, tasks
    accepted."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in requests:
        queue.put_nowait(body)
    latencies: list[float] = []
    accepted = 0

    async def client() -> None:
        nonlocal accepted
        headers = {"Content-Type": "application/json"}
        async with httpx.AsyncClient(base_url=base, timeout=120, headers=headers) as http:
            while not queue.empty():
                body = queue.get_nowait()
                started = time.perf_counter()
                r = await http.post("/api/v1/tasks/bulk", content=body)
                latencies.append((time.perf_counter() - started) * 1000)
                if r.status_code != 201:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
                accepted += len(r.json()["results"])

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - started, latencies, accepted


async def main(args: argparse.Namespace) -> None:
    registry = ExecutableRegistry([BenchNoop])
    settings = {"events_bridge_enabled": False} if args.no_bridge else {}
    async with bench_platform(args.store, registry, "tests.bench.noop", **settings) as bench:
        port = free_port()
        env = platform_env(
            **bench.env,
            TASKPLATFORM_AUTH="disabled",
            TASKPLATFORM_API_PROCESSES=str(args.api_processes),
            TASKPLATFORM_API_ACCESS_LOG="false",
        )
        log = Path(tempfile.mkdtemp(prefix="bench-bulk-")) / "api.log"
        with serving("api", env, log, port=port, ready_timeout=120) as base:
            warm = bodies(min(args.batch, 200), args.batch, keyed=False)  # connections, caches
            await post_all(base, warm, 1)
            requests = bodies(args.n, args.batch, args.keyed)
            pids = process_tree(api_pid(port))
            broker = broker_pid()
            before = (tree_cpu(pids), proc_cpu(broker) if broker else 0.0, machine_busy())
            seconds, latencies, accepted = await post_all(base, requests, args.clients)
            after = (tree_cpu(pids), proc_cpu(broker) if broker else 0.0, machine_busy())
        counts = await bench.runtime.store.count_by_status()
        stored = counts.get(TaskStatus.QUEUED, 0) - len(json.loads(warm[0])["tasks"])
        api, rabbit, total = (b - a for a, b in zip(before, after, strict=True))
        rest = total - api - rabbit
        keyed = ", each with an idempotency key" if args.keyed else ""
        bridge = "off" if args.no_bridge else "on"
        print(
            f"store={args.store} api processes={args.api_processes} clients={args.clients} "
            f"batch={args.batch} event bridge {bridge} cpus={os.cpu_count()}{keyed}"
        )
        print(
            f"bulk submit over HTTP: {accepted} tasks in {seconds:.2f}s = {accepted / seconds:.0f} tasks/s "
            f"accepted (stored: {stored}); request p50 {statistics.median(latencies):.0f} ms, "
            f"p99 {pct(latencies, 0.99):.0f} ms"
        )
        per_task = {"API": api, "RabbitMQ": rabbit, "PostgreSQL+clients+rest": rest}
        print(
            "  CPU per task: " + ", ".join(f"{k} {v / accepted * 1000:.3f} ms" for k, v in per_task.items())
        )
    if args.ceiling_n:
        # The size of one task message as the platform encodes it, for a like-for-like body.
        size = len(
            encode(TaskMessage.for_task(BackgroundTask(task_type="bench_noop", parameters={"n": 1}))).body
        )
        for connections in (1, 2):
            ceiling = await raw_publish_only(args.ceiling_n, connections, size)
            print(
                f"raw publish-only ceiling ({connections} connection(s), {size}-byte persistent messages, "
                f"confirmed, quorum queue, no consumer): {ceiling['msgs_per_s']:.0f} msgs/s, RabbitMQ CPU "
                f"{ceiling['rabbit_ms']:.3f} ms per message; bulk accepted / ceiling = "
                f"{accepted / seconds / ceiling['msgs_per_s']:.2f}"
            )
    if args.raw_n:
        raw = await raw_aio_pika(args.raw_n, prefetch=256, batch=200)
        print(
            f"raw aio-pika (confirmed publish -> quorum queue -> manual ack, one process): "
            f"{raw['messages']:.0f} msgs in {raw['total_s']:.2f}s = {raw['msgs_per_s']:.0f} msgs/s; "
            f"bulk accepted / raw = {accepted / seconds / raw['msgs_per_s']:.2f}"
        )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="postgresql", help="postgresql | sqlite | a store URL")
    p.add_argument("--n", type=int, default=20000, help="tasks to submit")
    p.add_argument("--batch", type=int, default=1000, help="tasks per request (at most 1000)")
    p.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients")
    p.add_argument("--api-processes", type=int, default=1, help="API processes (TASKPLATFORM_API_PROCESSES)")
    p.add_argument("--keyed", action="store_true", help="give every task an idempotency key")
    p.add_argument(
        "--no-bridge", action="store_true", help="EVENTS_BRIDGE_ENABLED=false (no submitted events)"
    )
    p.add_argument("--raw-n", type=int, default=10000, help="messages of the raw aio-pika loop (0: skip it)")
    p.add_argument(
        "--ceiling-n", type=int, default=20000, help="messages of the raw publish-only ceiling (0: skip it)"
    )
    return p.parse_args()


if __name__ == "__main__":
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main(parse_args()))
