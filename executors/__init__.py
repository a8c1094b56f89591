"""Typed task executables: the base class, the registry, and the reference tasks."""

from executors.base import BackgroundTaskExecutable, Progress, TaskContext
from executors.registry import ENTRY_POINT_GROUP, ExecutableRegistry
from taskplatform.ratelimit.declarations import RateLimit

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackgroundTaskExecutable",
    "ExecutableRegistry",
    "Progress",
    "RateLimit",
    "TaskContext",
]
