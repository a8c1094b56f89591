"""Load-generator processes, whatever they send: each is ``python -m <module>``, reads its spec
(one JSON line) on stdin, says ``ready``, reads one start time (a wall-clock line) and prints its
tally (one JSON line) on stdout. ``http_load`` and ``grpc_load`` are such modules."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from tests.bench.harness import ROOT, die_with_parent
from tests.bench.procfs import CpuLedger


async def drive_generators(
    module: str, specs: list[dict[str, Any]], *, groups: dict[str, list[int]], timeout: float
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Start a generator process (``python -m module``) per spec, send each its spec, wait until
    all say ``ready``, give them one start time, and read their tallies: (the tallies, the CPU
    seconds each of ``groups`` and the generators spent meanwhile). Every generator is killed
    and reaped whatever happens."""
    procs: list[asyncio.subprocess.Process] = []
    try:
        for spec in specs:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                module,
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 28,
                preexec_fn=die_with_parent,
            )
            procs.append(proc)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(spec).encode() + b"\n")
            await proc.stdin.drain()
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if line.strip() != b"ready":
                raise RuntimeError(f"a load generator did not start (said {line[:200]!r})")
        ledger = CpuLedger({**groups, "load generator": [p.pid for p in procs]})
        start = time.time() + 0.3
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{start}\n".encode())
            await proc.stdin.drain()
        await asyncio.sleep(start - time.time())
        before = ledger.snapshot()  # the generators' CPU: each measures its own window (below)
        lines = await asyncio.wait_for(
            asyncio.gather(*(p.stdout.readline() for p in procs if p.stdout)), timeout
        )
        spent = CpuLedger.spent(before, ledger.snapshot())
        if not all(lines):
            codes = [p.returncode for p in procs]
            raise RuntimeError(f"a load generator exited without its tally (exit codes {codes})")
        results = [json.loads(line) for line in lines]
    finally:
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()
    return results, spent
