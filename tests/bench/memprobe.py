"""Where a server process's memory goes (a benchmark tool, not a test).

``python -m tests.bench.memprobe OUT -m taskplatform.cli api ...`` runs the module as ``-m``
would, with ``tracemalloc`` tracing every allocation (``MEMPROBE_FRAMES`` frames each, default 1).
On each SIGUSR1 it collects the garbage and appends one report to ``OUT``: resident memory, live
pymalloc blocks, pymalloc arenas in use, objects the collector tracks, the bytes tracemalloc
sees, and the 15 allocation sites that grew most since the first report. Tracing slows the
process down (a few times): use it to find what grows, not to measure speed or absolute size.

``bench_soak --probe`` starts the API and the workers under it and signals them at each sample.
"""

from __future__ import annotations

import gc
import io
import os
import re
import runpy
import signal
import sys
import time
import tracemalloc
from contextlib import redirect_stderr
from pathlib import Path
from types import FrameType

_ARENAS = re.compile(r"# arenas allocated current\s*=\s*([\d,]+)")


def _arenas() -> int:
    """pymalloc arenas in use (``sys._debugmallocstats``, which writes to the C stderr)."""
    read, write = os.pipe()
    saved = os.dup(2)
    try:
        os.dup2(write, 2)
        with redirect_stderr(io.StringIO()):
            sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(write)
    with os.fdopen(read, "r") as text:
        found = _ARENAS.search(text.read())
    return int(found.group(1).replace(",", "")) if found else -1


def _rss_mb() -> float:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


class Probe:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.first: tracemalloc.Snapshot | None = None
        self.reports = 0

    def report(self, _signum: int, _frame: FrameType | None) -> None:
        started = time.perf_counter()
        gc.collect()
        snapshot = tracemalloc.take_snapshot().filter_traces(
            (tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__))
        )
        traced, _peak = tracemalloc.get_traced_memory()
        lines = [
            f"report {self.reports}: rss {_rss_mb():.1f} MB, traced {traced / 1e6:.1f} MB, "
            f"pymalloc blocks {sys.getallocatedblocks():,}, arenas {_arenas():,}, "
            f"gc objects {len(gc.get_objects()):,}, frozen {gc.get_freeze_count():,}"
        ]
        if self.first is None:
            self.first = snapshot
        else:
            for stat in snapshot.compare_to(self.first, "lineno")[:15]:
                lines.append(f"  {stat}")
        lines.append(f"  (report took {time.perf_counter() - started:.1f} s)")
        with self.out.open("a") as out:
            out.write("\n".join(lines) + "\n")
        self.reports += 1


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        raise SystemExit("usage: python -m tests.bench.memprobe OUT -m MODULE [ARG ...]")
    out, module = Path(sys.argv[1]), sys.argv[3]
    tracemalloc.start(int(os.environ.get("MEMPROBE_FRAMES", "1")))
    probe = Probe(out)
    signal.signal(signal.SIGUSR1, probe.report)
    sys.argv = [module, *sys.argv[4:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
