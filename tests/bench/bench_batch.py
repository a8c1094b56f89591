"""Batch (sub-task) benchmark (not a test): prints figures, asserts nothing.

Submits one ``batch_generate_summary`` parent with N items to a runtime that runs API and
worker in this process, and reports how long the parent took to submit its children and
until it finished (every child completed and rolled up), children per second, and the
parent's final summary. Each child costs a claim, a completion and three roll-ups into the
parent (submitted, started, completed), so this measures the roll-up path.

    .venv/bin/python -m tests.bench.bench_batch --store postgresql --n 2000
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from taskplatform.models import TERMINAL
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.submission import SubmitRequest
from taskplatform.tasks.registry import ExecutableRegistry
from tests.bench.harness import AMQP_URL, drop_pg_database, make_pg_database

TEXT = "The river rose in the night. Boats drifted loose. By morning the town had moved uphill."


async def run(args: argparse.Namespace) -> None:
    db_name = None
    if args.store == "postgresql":
        db_name, store_url = await make_pg_database()
    elif args.store == "sqlite":
        store_url = f"sqlite+aiosqlite:////tmp/bench-batch-{uuid.uuid4().hex[:8]}.db"
    else:
        store_url = args.store
    settings = PlatformSettings(
        amqp_url=AMQP_URL,
        store_url=store_url,
        topology_prefix=f"bench{uuid.uuid4().hex[:8]}.",
        prefetch=args.prefetch,
        events_bridge_enabled=not args.no_bridge,
    )
    runtime = Runtime(settings, role="dev", registry=ExecutableRegistry.discover(), consume=True, relay=True)
    await runtime.start(wait_for_broker=True)
    try:
        items = [{"text": TEXT, "max_sentences": 1} for _ in range(args.n)]
        started = time.perf_counter()
        cpu = time.process_time()
        submitted = await runtime.submitter.submit(
            SubmitRequest(task_type="batch_generate_summary", parameters={"items": items})
        )
        parent_id = submitted.task.id
        waiting_at = None
        while True:
            parent = await runtime.store.get(parent_id)
            assert parent is not None
            if waiting_at is None and parent.awaiting_children:
                waiting_at = time.perf_counter() - started
            if parent.status in TERMINAL:
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        cpu_used = time.process_time() - cpu
        summary = parent.sub_task_status_summary
        print(f"store={args.store} n={args.n} prefetch={args.prefetch} bridge={not args.no_bridge}")
        if waiting_at is not None:
            print(f"parent submitted its children and waited after {waiting_at:.2f}s")
        print(
            f"parent {parent.status.value} after {elapsed:.2f}s: {args.n / elapsed:.0f} children/s, "
            f"{cpu_used / args.n * 1000:.2f} ms CPU per child in this process (API + worker)"
        )
        print(f"summary: {summary.model_dump() if summary else None}")
        print(f"bus: { {name: vars(s) for name, s in runtime.bus.stats().items()} }")
    finally:
        await runtime.stop(grace=5)
        if db_name is not None:
            await drop_pg_database(db_name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="postgresql", help="postgresql | sqlite | a store URL")
    p.add_argument("--n", type=int, default=2000, help="items (children) in the batch")
    p.add_argument("--prefetch", type=int, default=64)
    p.add_argument("--no-bridge", action="store_true", help="do not publish external events")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
