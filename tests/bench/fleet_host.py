"""Several worker nodes in one process, for ``bench_fleet`` (not a test, not a product command).

    python -m tests.bench.fleet_host NODE_ID [NODE_ID ...]

Each node is a whole consuming ``Runtime`` (its own broker connection, node queue, selector
subscriptions, registry record and heartbeat, consumer and event bus) with the settings of this
process's ``TASKPLATFORM_*`` environment and its own ``node_id``. They share one store client:
PostgreSQL allows 100 connections in all, so 200 nodes cannot each hold a pool; the pool is
``STORE_MAX_CONNECTIONS`` for the whole process. The store is opened once and closed once, after
every node has stopped. Only the first node runs the DLQ consumer (one is enough per process).

SIGTERM or SIGINT stops every node (drain grace ``--grace`` seconds), then the process exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from taskplatform.logsetup import configure_logging
from taskplatform.runtime import Runtime, build_registry, build_store
from taskplatform.settings import PlatformSettings

log = logging.getLogger("fleet_host")


async def _nothing() -> None:
    """Stands in for the shared store's ``close`` while the nodes stop one by one."""


async def host(nodes: list[str], grace: float) -> None:
    base = PlatformSettings()
    configure_logging(base.log_level, json=base.log_json)
    registry = build_registry(base)  # the same executables for every node: built once
    store = build_store(base)
    await store.open()
    close = store.close
    store.close = _nothing  # type: ignore[method-assign]  # each node's stop would close it for all
    runtimes = [
        Runtime(
            base.model_copy(
                update={"node_id": node, "dlq_consumer_enabled": i == 0 and base.dlq_consumer_enabled}
            ),
            role="worker",
            registry=registry,
            store=store,
            consume=True,
        )
        for i, node in enumerate(nodes)
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.gather(*(runtime.start(wait_for_broker=True) for runtime in runtimes))
        log.warning("fleet host up: %d nodes", len(runtimes))
        await stop.wait()
    finally:
        await asyncio.gather(*(runtime.stop(grace) for runtime in runtimes), return_exceptions=True)
        await close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nodes", nargs="+")
    parser.add_argument("--grace", type=float, default=5.0)
    args = parser.parse_args()
    import uvloop

    uvloop.run(host(args.nodes, args.grace))


if __name__ == "__main__":
    main()
