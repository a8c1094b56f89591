"""Looking at processes from a test, independently of the code under test: ``/proc`` only."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of ``pid``, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[0].decode(), int(fields[2])


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie is dead: it only waits to be reaped)."""
    found = _stat(pid)
    return found is not None and found[0] not in ("Z", "X")


def group_of(pid: int) -> int | None:
    found = _stat(pid)
    return None if found is None else found[1]


def live_members(pgid: int) -> list[int]:
    """The pids of the live processes in process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _stat(int(entry))
            if found is not None and found[1] == pgid and found[0] not in ("Z", "X"):
                members.append(int(entry))
    return members


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    while not condition():
        if loop.time() > until:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def read_pid(path: Path) -> int | None:
    """The pid a command wrote to ``path`` (None until it is there in full)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return int(text) if text.endswith("\n") and text.strip().isdigit() else None
