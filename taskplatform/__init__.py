"""taskplatform: an event-driven background task platform on RabbitMQ.

What a task author imports lives here::

    from taskplatform import task, Executable, TaskContext, Progress
    from taskplatform import Retry, PermanentFailure, RetryPolicy, RateLimit

The names load on first use, so ``import taskplatform`` stays cheap (the CLI and tools import
it before they know what they need).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

TYPE_CHECKING = False  # spares importing typing at run time; type checkers treat it as True
if TYPE_CHECKING:
    from typing import Any

    from taskplatform.errors import Cancelled, PermanentFailure, Retry
    from taskplatform.ratelimit.declarations import RateLimit
    from taskplatform.retry import RetryPolicy
    from taskplatform.tasks.decorator import task
    from taskplatform.tasks.executable import BackgroundTaskExecutable as Executable
    from taskplatform.tasks.executable import Progress, TaskContext

#: Public name -> (module, attribute) it is loaded from.
_EXPORTS = {
    "task": ("taskplatform.tasks.decorator", "task"),
    "Executable": ("taskplatform.tasks.executable", "BackgroundTaskExecutable"),
    "TaskContext": ("taskplatform.tasks.executable", "TaskContext"),
    "Progress": ("taskplatform.tasks.executable", "Progress"),
    "Retry": ("taskplatform.errors", "Retry"),
    "PermanentFailure": ("taskplatform.errors", "PermanentFailure"),
    "Cancelled": ("taskplatform.errors", "Cancelled"),
    "RetryPolicy": ("taskplatform.retry", "RetryPolicy"),
    "RateLimit": ("taskplatform.ratelimit.declarations", "RateLimit"),
}

__all__ = [
    "Cancelled",
    "Executable",
    "PermanentFailure",
    "Progress",
    "RateLimit",
    "Retry",
    "RetryPolicy",
    "TaskContext",
    "__version__",
    "task",
]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'taskplatform' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
