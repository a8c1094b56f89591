"""What task authors write against: the executable contract, the ``@task`` decorator and the registry."""

from taskplatform.ratelimit.declarations import RateLimit
from taskplatform.tasks.decorator import TaskDefinitionError, TaskFunction, task
from taskplatform.tasks.executable import BackgroundTaskExecutable, Progress, TaskContext
from taskplatform.tasks.registry import ENTRY_POINT_GROUP, ExecutableRegistry

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackgroundTaskExecutable",
    "ExecutableRegistry",
    "Progress",
    "RateLimit",
    "TaskContext",
    "TaskDefinitionError",
    "TaskFunction",
    "task",
]
