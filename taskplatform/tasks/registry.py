"""An explicit registry of executables, filled by hand, by module list or by entry points."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any, TypeVar

from taskplatform.errors import ConfigError, UnknownTaskTypeError
from taskplatform.tasks.decorator import TaskFunction, executable_of
from taskplatform.tasks.executable import BackgroundTaskExecutable

ENTRY_POINT_GROUP = "taskplatform.executors"
#: The demonstration executable (``executors/demo.py``): ``taskplatform dev`` adds it to
#: ``EXECUTOR_MODULES``; other commands load it only when that setting names it.
DEMO_MODULE = "executors.demo"

ExecutableClass = type[BackgroundTaskExecutable[Any, Any]]
#: What ``register`` takes and gives back: an executable class or a ``@task`` function.
Registrable = TypeVar("Registrable", bound=ExecutableClass | TaskFunction[Any, Any])


class ExecutableRegistry:
    """Maps task types to executable classes. No global instance: build one and pass it."""

    def __init__(self, executables: Iterable[ExecutableClass] = ()) -> None:
        self._by_type: dict[str, ExecutableClass] = {}
        for cls in executables:
            self.register(cls)

    def register(self, obj: Registrable) -> Registrable:
        """Add an executable class or a ``@task`` function and return it unchanged (so it works
        as a decorator). Same type twice with another class fails."""
        cls = executable_of(obj)
        if cls is None:
            raise ConfigError(f"{obj!r} is not a BackgroundTaskExecutable subclass or a @task function")
        try:
            cls.validate_definition()
        except TypeError as exc:
            raise ConfigError(str(exc)) from exc
        existing = self._by_type.get(cls.task_type)
        if existing is not None and existing is not cls:
            raise ConfigError(f"task type {cls.task_type!r} registered twice: {_two(existing, cls)}")
        self._by_type[cls.task_type] = cls
        return obj

    def get(self, task_type: str) -> ExecutableClass:
        """The class for ``task_type``; UnknownTaskTypeError names the registered ones."""
        try:
            return self._by_type[task_type]
        except KeyError:
            raise UnknownTaskTypeError(task_type, list(self._by_type)) from None

    def __contains__(self, task_type: object) -> bool:
        return task_type in self._by_type

    def __iter__(self) -> Iterator[ExecutableClass]:
        return iter(self._by_type.values())

    def __len__(self) -> int:
        return len(self._by_type)

    def task_types(self) -> list[str]:
        """Registered task types, sorted."""
        return sorted(self._by_type)

    def queues(self) -> dict[str, list[str]]:
        """Queue group -> the task types routed to it."""
        groups: dict[str, list[str]] = {}
        for cls in self._by_type.values():
            groups.setdefault(cls.queue, []).append(cls.task_type)
        return {queue: sorted(types) for queue, types in sorted(groups.items())}

    # ------------------------------------------------------------ discovery
    def load_module(self, module_name: str) -> int:
        """Register executables from a module: its ``EXECUTABLES`` list if it has one, else
        every concrete executable class and ``@task`` function defined in it. Returns how many."""
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"cannot import executor module {module_name!r}: {exc}") from exc
        found = list(_executables_in(module))
        if not found:
            raise ConfigError(f"executor module {module_name!r} defines no executables")
        for cls in found:
            self.register(cls)
        return len(found)

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> int:
        """Register every executable advertised in the entry-point group."""
        count = 0
        for ep in entry_points(group=group):
            try:
                target = ep.load()
            except Exception as exc:  # a broken plugin must name itself
                raise ConfigError(f"entry point {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
            classes = list(_executables_in(target)) if isinstance(target, ModuleType) else [target]
            for cls in classes:
                self.register(cls)
                count += 1
        return count

    @classmethod
    def discover(
        cls, modules: Iterable[str] = (), *, entry_point_group: str | None = ENTRY_POINT_GROUP
    ) -> ExecutableRegistry:
        """A registry filled from entry points (unless ``entry_point_group`` is None) and modules."""
        registry = cls()
        if entry_point_group:
            registry.load_entry_points(entry_point_group)
        for name in modules:
            registry.load_module(name)
        return registry


def _executables_in(module: ModuleType) -> Iterator[Any]:
    declared = getattr(module, "EXECUTABLES", None)
    if declared is not None:
        yield from declared
        return
    seen: set[ExecutableClass] = set()
    for _, obj in inspect.getmembers(module):
        cls = executable_of(obj)
        if (
            cls is not None
            and cls not in seen
            and cls.__module__ == module.__name__
            and not inspect.isabstract(cls)
        ):
            seen.add(cls)
            yield cls


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _two(existing: type, new: type) -> str:
    """The two classes of a duplicate task type; two objects of one name come from a reloaded module."""
    first, second = _qualified(existing), _qualified(new)
    if first == second:
        return f"{first} and a different {second} (module reloaded?)"
    return f"{first} and {second}"
