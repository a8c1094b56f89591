"""Run a real worker process (``taskplatform worker``) for crash and signal tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from taskplatform.settings import PlatformSettings

ROOT = Path(__file__).resolve().parents[2]


def start_worker(
    settings: PlatformSettings,
    *,
    node_id: str,
    command: str = "worker",
    stderr: int | None = None,
    **extra: str,
) -> subprocess.Popen[bytes]:
    """A worker process (or another server ``command``, e.g. ``api``) with this test's store,
    broker, topology prefix and test executables; ``stderr=subprocess.PIPE`` to read its log."""
    env = {
        **os.environ,
        "TASKPLATFORM_AMQP_URL": settings.amqp_url,
        "TASKPLATFORM_STORE_URL": settings.store_url,
        "TASKPLATFORM_TOPOLOGY_PREFIX": settings.topology_prefix,
        "TASKPLATFORM_EXECUTOR_MODULES": '["tests.support.executables"]',
        "TASKPLATFORM_NODE_ID": node_id,
        "TASKPLATFORM_OUTBOX_RELAY_ENABLED": "false",
        "TASKPLATFORM_LOG_LEVEL": "WARNING",
        **{f"TASKPLATFORM_{k.upper()}": v for k, v in extra.items()},
    }
    argv = [sys.executable, "-m", "taskplatform.cli", command]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stderr=stderr)  # noqa: S603
