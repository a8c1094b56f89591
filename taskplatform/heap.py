"""Short garbage-collector pauses in a long-running server process.

CPython's full (generation 2) collection walks every tracked object. A started API or worker
holds a few hundred thousand of them that live as long as the process (modules, classes,
pydantic schemas and validators, the registry, the runtime); measured on the benchmark, full
collections during a run paused the event loop for 45–130 ms, which was the tail of the
submit→start latency (p99 50–75 ms at 200 tasks/s while p50 was 1.5 ms). Once a server has
started, :func:`settle_startup_heap` collects once and moves what survived into the permanent
generation (``gc.freeze``): later full collections walk only what was created since.

Only for server processes (``taskplatform api|worker|dev``): a frozen object is never collected,
so a process that builds and drops many runtimes (a test session) must not freeze each one.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


def settle_startup_heap() -> int:
    """Collect, then freeze every object that survived start-up; the number frozen."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info(
        "start-up heap settled: %d objects moved out of the collector's reach in %.0f ms",
        frozen,
        (time.perf_counter() - started) * 1000,
    )
    return frozen
