"""Faking this process's wall clock for the platform, in one process: a host whose clock is off.

``platform_clock_off(seconds)`` moves the wall clock every ``taskplatform`` module reads
(``utcnow`` and ``time.time`` as each module imported them) by ``seconds``, and nothing else:
monotonic time, the event loop, the drivers, the real servers and the MongoDB emulation's
server clock (``datetime.now``) keep the true time. So code inside the block behaves like a
process on a machine whose clock is off, talking to a store whose clock is right. Processes
other than this one are faked with ``faketime`` instead (``tests/support/worker_process``).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from taskplatform.models import task as task_model

_TRUE_UTCNOW = task_model.utcnow


def true_utcnow() -> datetime:
    """The true time, also inside ``platform_clock_off``."""
    return _TRUE_UTCNOW()


class _OffTime:
    """The ``time`` module with ``time()`` moved; everything else as it is."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    def time(self) -> float:
        return time.time() + self._seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@contextlib.contextmanager
def platform_clock_off(seconds: float) -> Iterator[None]:
    """Inside the block, the platform reads a wall clock ``seconds`` off the true one."""
    off = timedelta(seconds=seconds)

    def utcnow() -> datetime:
        return _TRUE_UTCNOW() + off

    with pytest.MonkeyPatch.context() as patch:
        for name, module in list(sys.modules.items()):
            if module is None or not (name == "taskplatform" or name.startswith("taskplatform.")):
                continue
            if getattr(module, "utcnow", None) is _TRUE_UTCNOW:
                patch.setattr(module, "utcnow", utcnow)
            if getattr(module, "time", None) is time:
                patch.setattr(module, "time", _OffTime(seconds))
        yield
