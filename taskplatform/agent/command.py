"""Running one command: no shell, its own process group, output tails kept, and the whole group
killed (SIGTERM, then SIGKILL after a grace) on time-out, on cancel, or when its leader exits
and leaves processes behind."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

log = logging.getLogger(__name__)

#: Bytes read from a pipe at a time.
READ_CHUNK = 65_536
#: How often the runner looks at ``cancelled()`` and its deadline while the command runs.
POLL_SECONDS = 0.2
#: How often a live group is looked at again during its kill grace.
GROUP_POLL_SECONDS = 0.05
#: After the group is gone, how long the pipes get to deliver their last bytes.
DRAIN_SECONDS = 2.0
#: After SIGKILL, how long to wait for the kernel to take the group down before giving up waiting.
KILLED_WAIT_SECONDS = 5.0


class Ending(str, Enum):
    """Why a command stopped."""

    EXITED = "exited"
    TIMED_OUT = "timed out"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class CommandSpec:
    """What to run and within which bounds (the executable makes one per task from its template)."""

    argv: Sequence[str]
    cwd: str
    env: Mapping[str, str]
    timeout: float
    max_output_bytes: int
    kill_grace: float


class TailBuffer:
    """The last ``limit`` bytes of a stream, and how many bytes it carried in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._data = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self._data += chunk
        if len(self._data) > 2 * self.limit:  # trim in batches, not on every chunk
            del self._data[: len(self._data) - self.limit]

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def tail(self, limit: int | None = None) -> bytes:
        """The kept bytes, or only their last ``limit``."""
        keep = self.limit if limit is None else min(limit, self.limit)
        return bytes(self._data[-keep:]) if len(self._data) > keep else bytes(self._data)

    def text(self, limit: int | None = None) -> str:
        """``tail(limit)`` as text: UTF-8, a character cut at the start skipped, invalid bytes
        and NUL as U+FFFD (a store keeps no NUL)."""
        data = self.tail(limit)
        if len(data) < self.total:
            skip = 0
            while skip < min(3, len(data)) and 0x80 <= data[skip] <= 0xBF:
                skip += 1
            data = data[skip:]
        return data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


@dataclass(frozen=True)
class CommandOutcome:
    """How a command ended and what it wrote."""

    ending: Ending
    #: The leader's exit status: a negative number is the signal that ended it.
    exit_code: int | None
    stdout: TailBuffer
    stderr: TailBuffer
    duration_seconds: float
    #: The leader's pid, also the id of the process group the command ran in.
    pid: int


#: Called with both buffers while the command runs (see ``run_command``'s ``report_every``).
Reporter = Callable[[TailBuffer, TailBuffer, float], Awaitable[None]]


async def run_command(
    spec: CommandSpec,
    *,
    cancelled: Callable[[], bool] = lambda: False,
    report: Reporter | None = None,
    report_every: float = 1.0,
) -> CommandOutcome:
    """Run ``spec`` and return how it ended; ``OSError`` when it cannot start.

    ``cancelled`` is polled every ``POLL_SECONDS``; ``report(stdout, stderr, elapsed)`` is awaited
    at most every ``report_every`` seconds, when there is new output. Whatever happens (this
    coroutine cancelled included), no process of the command's group is left running.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    proc = await asyncio.create_subprocess_exec(
        *spec.argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=spec.cwd,
        env=dict(spec.env),
        start_new_session=True,  # its own session and process group: killpg reaches every descendant
    )
    pgid = proc.pid
    out, err = TailBuffer(spec.max_output_bytes), TailBuffer(spec.max_output_bytes)
    assert proc.stdout is not None and proc.stderr is not None
    readers = [asyncio.create_task(_pump(proc.stdout, out)), asyncio.create_task(_pump(proc.stderr, err))]
    # Ends once the leader has exited AND both pipes are closed: a process the leader left
    # behind keeps it waiting, so the leader's exit itself is read from proc.returncode.
    waiter = asyncio.create_task(proc.wait())
    stopped = False
    try:
        ending = await _supervise(
            proc, [waiter, *readers], started + spec.timeout, cancelled, (out, err), report, report_every
        )
        if ending is not Ending.EXITED or group_alive(pgid):
            await stop_group(pgid, spec.kill_grace)  # also what the leader left behind when it exited
        stopped = True
        await asyncio.wait(readers, timeout=DRAIN_SECONDS)
    finally:
        if not stopped:  # cancelled from outside, or something above failed: no time for a grace
            signal_group(pgid, signal.SIGKILL)
            await _gone(pgid, KILLED_WAIT_SECONDS)
        await _close(proc, waiter, readers)
    return CommandOutcome(
        ending=ending,
        exit_code=proc.returncode,
        stdout=out,
        stderr=err,
        duration_seconds=round(loop.time() - started, 3),
        pid=pgid,
    )


async def _supervise(
    proc: asyncio.subprocess.Process,
    watched: list[asyncio.Task[Any]],
    deadline: float,
    cancelled: Callable[[], bool],
    buffers: tuple[TailBuffer, TailBuffer],
    report: Reporter | None,
    report_every: float,
) -> Ending:
    """Wait for the leader to exit, the deadline to pass or ``cancelled()``, reporting output.
    ``watched`` (the wait and the pipe readers) only wakes the loop early."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    next_report = started + report_every
    reported = (0, 0)
    out, err = buffers
    while True:
        if proc.returncode is not None:
            return Ending.EXITED
        now = loop.time()
        if cancelled():
            return Ending.CANCELLED
        if now >= deadline:
            return Ending.TIMED_OUT
        if report is not None and now >= next_report and (out.total, err.total) != reported:
            reported = (out.total, err.total)
            next_report = now + report_every
            await report(out, err, now - started)
            continue
        pending = [task for task in watched if not task.done()]
        timeout = min(POLL_SECONDS, deadline - now)
        if pending:
            await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.sleep(timeout)


async def stop_group(pgid: int, grace: float) -> None:
    """SIGTERM to every process of group ``pgid``; SIGKILL to what is still alive ``grace``
    seconds later; then wait (boundedly) until the group is gone."""
    signal_group(pgid, signal.SIGTERM)
    if not await _gone(pgid, grace):
        signal_group(pgid, signal.SIGKILL)
        await _gone(pgid, KILLED_WAIT_SECONDS)


async def _gone(pgid: int, seconds: float) -> bool:
    """Whether group ``pgid`` has no live process left, looked at until ``seconds`` pass."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while True:
        if not group_alive(pgid):
            return True
        if loop.time() >= until:
            return False
        await asyncio.sleep(GROUP_POLL_SECONDS)


def signal_group(pgid: int, signum: signal.Signals) -> None:
    """Send ``signum`` to process group ``pgid``; a group already gone is not an error. One the
    worker may not signal (a process that changed its user, like sudo) is logged, not raised: the
    caller's clean-up goes on, and the command's ending says it could not be stopped."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        log.error(
            "cannot send %s to command process group %d (not permitted: a process of it changed its "
            "user?); it may keep running",
            signum.name,
            pgid,
        )


def group_alive(pgid: int) -> bool:
    """Whether a live process (not a zombie: those are dead, waiting to be reaped) is in group
    ``pgid``. Reads ``/proc`` where there is one; else asks the kernel with signal 0."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat_file:
                stat = stat_file.read()
        except OSError:
            continue  # ended meanwhile
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


async def _pump(stream: asyncio.StreamReader, buffer: TailBuffer) -> None:
    while chunk := await stream.read(READ_CHUNK):
        buffer.feed(chunk)


async def _close(
    proc: asyncio.subprocess.Process, waiter: asyncio.Task[int], readers: list[asyncio.Task[None]]
) -> None:
    """End the reader tasks and the wait; pipes a process that escaped the group (a new session
    of its own) still holds open are closed from this side."""
    for reader in readers:
        if not reader.done():
            reader.cancel()
    # A read error only costs output; it must not hide how the command ended.
    await asyncio.gather(*readers, return_exceptions=True)
    transport = getattr(proc, "_transport", None)  # asyncio's Process has no public close()
    if not waiter.done():
        if proc.returncode is None:  # killed, not reaped yet
            await asyncio.wait([waiter], timeout=KILLED_WAIT_SECONDS)
        if transport is not None:
            transport.close()  # closed pipes let the wait end
        await asyncio.wait([waiter], timeout=1.0)
        if not waiter.done():
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
    if transport is not None and not transport.is_closing():
        transport.close()
