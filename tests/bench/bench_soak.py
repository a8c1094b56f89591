"""Memory soak (not a test): prints figures, asserts nothing.

Runs ``taskplatform api`` and ``--workers`` (2) worker processes on a store and topology of
their own and submits ``--n`` no-op tasks through the API: ``POST /api/v1/tasks/bulk`` when
the API has it (found in /openapi.json at run time), else one ``POST /api/v1/tasks`` per task
(``--via`` picks; ``inprocess`` submits with ``TaskSubmitter.submit_many`` in this process,
which leaves the API idle). The backlog stays bounded: before each chunk it waits while more
than ``--window`` messages are ready in the work queue (a passive declare).

Every ``--every`` tasks it prints each process's resident memory (VmRSS); at the end, once
every task is COMPLETED, each process's largest deviation from its first sample after the
warm-up (the 2nd sample), in ± %. The rate is printed beside the raw aio-pika loop measured
first in the same run.

    .venv/bin/python -m tests.bench.bench_soak --n 1000000 --every 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika

from taskplatform.models import TaskStatus
from taskplatform.submission import SubmitRequest
from tests.bench.bench_http import Platform, api_platform, wait_completed
from tests.bench.harness import AMQP_URL, MEMPROBE_ENV, RawBaseline, queue_ready, raw_baseline, run_bench
from tests.bench.http_load import (
    SUBMIT_PATH,
    BulkRoute,
    HttpConnection,
    accepted_in,
    find_bulk_route,
    submit_body,
)
from tests.bench.procfs import tree_rss_mb


@dataclass
class Submitter:
    """Submits tasks the chosen way, ``clients`` requests (or calls) in flight."""

    platform: Platform
    via: str
    bulk: BulkRoute | None
    batch: int
    clients: int
    statuses: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    next_n: int = 0
    conns: list[HttpConnection] = field(default_factory=list)

    async def open(self) -> None:
        if self.via != "inprocess":
            assert self.platform.api.base is not None
            host, port = self.platform.api.base.removeprefix("http://").split(":")
            self.conns = [HttpConnection(host, int(port)) for _ in range(self.clients)]

    async def close(self) -> None:
        for conn in self.conns:
            await conn.close()

    def _take(self, left: list[int], most: int) -> tuple[int, int] | None:
        if left[0] <= 0:
            return None
        n = min(most, left[0])
        left[0] -= n
        first, self.next_n = self.next_n, self.next_n + n
        return first, n

    async def submit(self, count: int) -> None:
        left = [count]
        if self.via == "inprocess":
            await asyncio.gather(*(self._inprocess(left) for _ in range(self.clients)))
        else:
            await asyncio.gather(*(self._http(conn, left) for conn in self.conns))

    async def _inprocess(self, left: list[int]) -> None:
        while (taken := self._take(left, self.batch)) is not None:
            first, n = taken
            requests = [SubmitRequest(**submit_body(first + i)) for i in range(n)]
            results = await self.platform.runtime.submitter.submit_many(requests)
            self.accepted += len(results)
            self.statuses["in-process"] += len(results)

    async def _http(self, conn: HttpConnection, left: list[int]) -> None:
        most = self.bulk.batch if self.bulk else 1
        while (taken := self._take(left, most)) is not None:
            first, n = taken
            if self.bulk is None:
                path, body = SUBMIT_PATH, json.dumps(submit_body(first)).encode()
            else:
                items = [submit_body(first + i) for i in range(n)]
                path = self.bulk.path
                body = json.dumps(items if self.bulk.key is None else {self.bulk.key: items}).encode()
            try:
                status, answer = await conn.request("POST", path, body)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                self.statuses[f"error:{type(exc).__name__}"] += 1
                await asyncio.sleep(0.1)
                continue
            self.statuses[str(status)] += 1
            self.accepted += accepted_in(status, answer, n)


@dataclass
class Memory:
    """RSS samples (MB) of each process, with the submitted count of each sample."""

    names: list[str]
    rows: list[tuple[str, list[float]]] = field(default_factory=list)

    def sample(self, label: str, platform: Platform, *, keep: bool = True) -> None:
        """Print every process's RSS now; ``keep``: as a sample of the soak (the one before
        any load is shown only)."""
        pids = [platform.api.pid, *(w.pid for w in platform.workers)]
        values = [tree_rss_mb(pid) for pid in pids]
        if os.environ.get(MEMPROBE_ENV):
            for pid in pids:  # each appends a report to its file in the probe directory
                os.kill(pid, signal.SIGUSR1)
        if keep:
            self.rows.append((label, values))
        print(
            f"  {label:>22}: "
            + ", ".join(f"{n} {v:,.1f} MB" for n, v in zip(self.names, values, strict=True))
        )

    def deviations(self) -> list[str]:
        """Per process: the largest deviation from the 2nd sample (the first after the warm-up,
        which is the first ``--every`` tasks) among it and every later sample, in ± %, and where
        the last sample (all tasks done) ended."""
        if len(self.rows) < 2:
            return ["fewer than 2 samples: lower --every"]
        lines = []
        for i, name in enumerate(self.names):
            ref = self.rows[1][1][i]
            later = [row[1][i] for row in self.rows[1:]]
            worst = max(later, key=lambda v: abs(v - ref))
            lines.append(
                f"{name}: reference {ref:,.1f} MB; max deviation {(worst - ref) / ref * 100:+.1f} % "
                f"(±{abs(worst - ref) / ref * 100:.1f} %; range {min(later):,.1f}-{max(later):,.1f} MB); "
                f"last {(later[-1] - ref) / ref * 100:+.1f} %"
            )
        return lines


async def soak(args: argparse.Namespace, raw: RawBaseline, platform: Platform) -> None:
    assert platform.api.base is not None
    bulk = await find_bulk_route(platform.api.base, args.batch) if args.via in ("auto", "bulk") else None
    if args.via == "bulk" and bulk is None:
        raise SystemExit("--via bulk: the API has no bulk submission route")
    via = args.via if args.via != "auto" else ("bulk" if bulk else "post")
    clients = args.clients or (4 if via in ("bulk", "inprocess") else 16)
    how = {
        "bulk": f"POST {bulk.path if bulk else ''} ({bulk.batch if bulk else 0} tasks a request)",
        "post": f"POST {SUBMIT_PATH} (one task a request)",
        "inprocess": f"TaskSubmitter.submit_many in this process ({args.batch} a call; the API idles)",
    }[via]
    print(
        f"submitting {args.n:,} tasks by {how}, {clients} in flight; ready backlog kept under {args.window:,}"
    )
    submitter = Submitter(platform, via, bulk, args.batch, clients)
    memory = Memory(["API", *(w.name for w in platform.workers)])
    queue = platform.runtime.topology.queue_for("bench_noop")
    assert queue is not None
    connection = await aio_pika.connect(AMQP_URL, timeout=10)
    await submitter.open()
    try:
        memory.sample("before any task", platform, keep=False)
        start = time.perf_counter()
        chunk = max(1, min(args.every, args.window // 2))
        next_sample = args.every
        while submitter.next_n < args.n:
            while await queue_ready(queue, connection) > args.window:
                await asyncio.sleep(0.2)
            await submitter.submit(min(chunk, args.n - submitter.next_n, next_sample - submitter.next_n))
            if submitter.next_n >= next_sample:
                elapsed = time.perf_counter() - start
                memory.sample(f"{submitter.next_n:,} ({submitter.next_n / elapsed:,.0f}/s)", platform)
                next_sample += args.every
        submitted_s = time.perf_counter() - start
        while await queue_ready(queue, connection) > 0:
            await asyncio.sleep(1.0)
        waited, counts = await wait_completed(platform.runtime, submitter.accepted, args.complete_timeout)
        total_s = time.perf_counter() - start
        memory.sample("all done", platform)
    finally:
        await submitter.close()
        await connection.close()
    done = counts.get(TaskStatus.COMPLETED, 0)
    print(
        f"COMPLETED {done:,} of {submitter.accepted:,} accepted ({args.n:,} sent) in {total_s:,.1f} s = "
        f"{raw.rate(done / total_s)}; submitting took {submitted_s:,.1f} s; answers: "
        + ", ".join(f"{k}: {v:,}" for k, v in sorted(submitter.statuses.items()))
    )
    print("RSS, each process against its first sample after the warm-up (the 2nd sample):")
    for line in memory.deviations():
        print(f"  {line}")


async def main(args: argparse.Namespace) -> None:
    if args.probe is not None:
        args.probe.mkdir(parents=True, exist_ok=True)
        os.environ[MEMPROBE_ENV] = str(args.probe.resolve())  # the servers' environment is built from ours
    raw = await raw_baseline(args.raw_n)
    print(
        f"bench_soak: store={args.store} API processes=1 workers={args.workers} cores={os.cpu_count()} "
        "(trial figures on a shared machine are noisy)"
    )
    print(raw.line())
    log_dir = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    failed = True
    try:
        # The relay on, as deployed: a publish that fails under load is published again from the
        # outbox, and the soak ends with every task COMPLETED.
        async with api_platform(
            args.store, api_processes=1, workers=args.workers, log_dir=log_dir, outbox_relay_enabled=True
        ) as platform:
            await soak(args, raw, platform)
        failed = False
    finally:
        if failed:
            print(f"logs kept in {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="postgresql", help="postgresql | sqlite | a store URL")
    p.add_argument("--n", type=int, default=1_000_000, help="tasks to submit")
    p.add_argument("--every", type=int, default=100_000, help="print RSS every this many tasks")
    p.add_argument("--window", type=int, default=20_000, help="most messages ready in the queue")
    p.add_argument(
        "--via", choices=["auto", "bulk", "post", "inprocess"], default="auto", help="auto: bulk if any"
    )
    p.add_argument("--batch", type=int, default=500, help="tasks per bulk request / submit_many call")
    p.add_argument("--clients", type=int, default=0, help="requests in flight (0: 4 bulk, 16 single)")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--complete-timeout", type=float, default=1800.0, help="seconds to wait for COMPLETED")
    p.add_argument(
        "--probe",
        type=Path,
        default=None,
        help="run the servers under tests/bench/memprobe.py, reports in this directory (slow: traces)",
    )
    p.add_argument("--raw-n", type=int, default=10000, help="messages of the raw aio-pika loop")
    return p.parse_args()


if __name__ == "__main__":
    run_bench(main(parse_args()))
