"""What a benchmark reads of a process and the machine from /proc: CPU time, resident memory
and wake-ups of a process and its children, the broker's process, how busy the machine is, and
a ledger of the CPU each group of processes spent over a run, and the CPU of a PostgreSQL
database's backends."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

PG_ADMIN = os.environ.get("TASKPLATFORM_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far; 0.0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (an API of several processes is uvicorn's supervisor
    and its children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
    return found


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants (those alive now)."""
    return sum(proc_cpu(p) for p in proc_tree(pid))


def tree_runtime(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants, from each live thread's scheduler statistics
    (/proc/<pid>/task/<tid>/schedstat, nanoseconds): far finer than utime + stime's clock
    ticks (10 ms), which is what an idle process needs; threads that ended are not counted."""
    total = 0
    for proc in proc_tree(pid):
        for task in Path(f"/proc/{proc}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def proc_status(pid: int, field: str) -> int:
    """An integer field of /proc/<pid>/status (``VmRSS`` in kB, ``voluntary_ctxt_switches``…);
    0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, MB."""
    return sum(proc_status(p, "VmRSS") for p in proc_tree(pid)) / 1024


@dataclass(frozen=True)
class ThreadSwitches:
    """One thread's name and its context switches so far: voluntary ones are wake-ups from a
    wait (a timer, a socket, a lock), involuntary ones preemptions."""

    name: str
    voluntary: int
    involuntary: int


def thread_switches(pid: int) -> dict[int, ThreadSwitches]:
    """Context switches of every thread of ``pid`` (its descendants' too), by thread id."""
    out: dict[int, ThreadSwitches] = {}
    for proc in proc_tree(pid):
        for task in Path(f"/proc/{proc}/task").glob("*"):
            try:
                name = (task / "comm").read_text().strip()
                status = (task / "status").read_text().splitlines()
            except OSError:
                continue
            values = {k: v for k, _, v in (line.partition(":") for line in status)}
            out[int(task.name)] = ThreadSwitches(
                f"{proc}/{name}",
                int(values.get("voluntary_ctxt_switches", "0")),
                int(values.get("nonvoluntary_ctxt_switches", "0")),
            )
    return out


def machine_busy() -> float:
    """CPU seconds all cores have spent not idle since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLK_TCK


def broker_pid() -> int | None:
    """The local RabbitMQ's Erlang VM, when it runs on this machine."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() == "beam.smp":
                    return int(proc.name)
            except OSError:
                continue
    return None


class CpuLedger:
    """CPU seconds spent by named process trees, this process, the local broker and the rest
    of the machine (PostgreSQL, the kernel, anyone else) between two snapshots."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.broker = broker_pid()

    def snapshot(self) -> dict[str, float]:
        shot = {name: sum(tree_cpu(p) for p in pids) for name, pids in self.groups.items()}
        shot["bench process"] = proc_cpu(os.getpid())
        shot["RabbitMQ"] = proc_cpu(self.broker) if self.broker else 0.0
        shot["machine"] = machine_busy()
        return shot

    @staticmethod
    def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """Seconds per name between the snapshots, plus ``rest`` (machine minus all named)."""
        out = {name: after[name] - before[name] for name in before if name != "machine"}
        out["rest"] = (after["machine"] - before["machine"]) - sum(out.values())
        return out


class PgWatch:
    """A PostgreSQL database's connections and the CPU of the server processes serving them,
    sampled every 0.2 s in the background: the peak count, and the CPU seconds those backends
    spent while watched (a backend that ends between two samples loses its last 0.2 s). Nothing
    for a store that is not PostgreSQL."""

    def __init__(self, store_url: str) -> None:
        self.database = store_url.rsplit("/", 1)[1] if store_url.startswith("postgresql") else None
        self.peak: int | None = None
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def cpu(self) -> float | None:
        """CPU seconds of this database's backends since the watch began."""
        if self.database is None:
            return None
        return sum(cpu - self._first.get(pid, 0.0) for pid, cpu in self._last.items())

    def move_from_rest(self, cpu: dict[str, float]) -> None:
        """In a ``CpuLedger.spent`` answer: this database's backends as ``PostgreSQL``, out of
        ``rest``."""
        if self.cpu is not None:
            rest = cpu.pop("rest") - self.cpu
            cpu["PostgreSQL"] = self.cpu
            cpu["rest"] = rest  # last, as before

    async def _poll(self, conn: Any) -> None:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", self.database)
        self.peak = max(self.peak or 0, len(rows))
        for row in rows:
            self._last[row["pid"]] = proc_cpu(row["pid"])

    async def _run(self, conn: Any) -> None:
        try:
            while True:
                await self._poll(conn)
                await asyncio.sleep(0.2)
        finally:
            await conn.close()

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[PgWatch]:
        if self.database is not None:
            conn = await asyncpg.connect(PG_ADMIN)
            await self._poll(conn)
            self._first = dict(self._last)
            self._task = asyncio.create_task(self._run(conn))
        try:
            yield self
        finally:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
