"""Run a real worker process (``taskplatform worker``) for crash, signal and clock tests."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from taskplatform.settings import PlatformSettings

ROOT = Path(__file__).resolve().parents[2]
#: libfaketime (Debian's ``faketime``; ``scripts/faketime-tool`` installs it), or None. Preloaded
#: directly rather than through the ``faketime`` command, which runs the program as its child: a
#: signal to the command would not reach the worker.
FAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), None)


def start_worker(
    settings: PlatformSettings,
    *,
    node_id: str,
    command: str = "worker",
    stderr: int | IO[Any] | None = None,
    clock_offset: str | None = None,
    **extra: str,
) -> subprocess.Popen[bytes]:
    """A worker process (or another server ``command``, e.g. ``api``) with this test's store,
    broker, topology prefix and test executables; ``stderr=subprocess.PIPE`` (or a file) to read
    its log. ``clock_offset`` (e.g. ``"+70s"``) runs it under libfaketime: its wall clock is off
    by that much (monotonic time is left alone, as a host's clock error would leave it)."""
    env = {
        **os.environ,
        "TASKPLATFORM_AMQP_URL": settings.amqp_url,
        "TASKPLATFORM_STORE_URL": settings.store_url,
        "TASKPLATFORM_TOPOLOGY_PREFIX": settings.topology_prefix,
        "TASKPLATFORM_EXECUTOR_MODULES": '["tests.support.executables"]',
        "TASKPLATFORM_NODE_ID": node_id,
        "TASKPLATFORM_OUTBOX_RELAY_ENABLED": "false",
        "TASKPLATFORM_LOG_LEVEL": "WARNING",
        "PYTHONFAULTHANDLER": "1",  # a stuck process stopped with SIGABRT writes its threads' stacks
        **{f"TASKPLATFORM_{k.upper()}": v for k, v in extra.items()},
    }
    argv = [sys.executable, "-m", "taskplatform.cli", command]
    if clock_offset is not None:
        if FAKETIME is None:
            raise RuntimeError("libfaketime is not installed: run scripts/faketime-tool")
        env.update(LD_PRELOAD=FAKETIME, FAKETIME=clock_offset, FAKETIME_DONT_FAKE_MONOTONIC="1")
    return subprocess.Popen(argv, cwd=ROOT, env=env, stderr=stderr)  # noqa: S603
