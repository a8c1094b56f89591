"""``@task``: one async function becomes a task type.

``async def f(ctx: TaskContext, params: P) -> R`` with pydantic models ``P`` and ``R`` is turned
into a ``BackgroundTaskExecutable`` subclass whose ``Params``/``Result`` come from the
annotations. The decorated name stays the function (call it directly in a unit test); the
generated class is ``f.executable`` and is what the registry registers. Module discovery
(``EXECUTOR_MODULES``) and entry points accept the function as well as the class.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, TypeVar, cast, overload

from pydantic import BaseModel

from taskplatform.errors import ConfigError
from taskplatform.ratelimit.declarations import RateLimit
from taskplatform.retry import RetryPolicy
from taskplatform.tasks.executable import (
    TASK_TYPE_PATTERN,
    BackgroundTaskExecutable,
    Progress,
    TaskContext,
)

P = TypeVar("P", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)

Exceptions = type[BaseException] | Iterable[type[BaseException]]


class TaskDefinitionError(ConfigError, TypeError):
    """A decorated function does not meet the ``@task`` contract; the message names it."""


class TaskFunction(Protocol[P, R]):
    """What ``@task`` returns: the function itself, carrying its generated executable class."""

    executable: type[BackgroundTaskExecutable[P, R]]
    task_type: str

    def __call__(self, ctx: TaskContext[P], params: P, /) -> Awaitable[R]: ...


TaskFn = Callable[[TaskContext[P], P], Awaitable[R]]


@overload
def task(fn: TaskFn[P, R], /) -> TaskFunction[P, R]: ...
@overload
def task(
    name: str | None = None,
    *,
    timeout: float | None = None,
    retry_policy: RetryPolicy | None = None,
    retryable_exceptions: Exceptions = (),
    non_retryable_exceptions: Exceptions = (),
    rate_limits: RateLimit | Iterable[RateLimit] = (),
    queue: str = "default",
    description: str | None = None,
    progress_model: type[Progress] = Progress,
    fan_out: int | Callable[[P], int] = 0,
) -> Callable[[TaskFn[P, R]], TaskFunction[P, R]]: ...
def task(name: Any = None, **options: Any) -> Any:
    """Declare a task type from ``async def f(ctx: TaskContext, params: P) -> R``.

    Use bare (``@task``: the task type is the function's name) or with options:
    ``@task("greet", timeout=30, queue="mail")``. The options are the class attributes of
    ``BackgroundTaskExecutable`` of the same names; ``description`` defaults to the first line
    of the docstring, ``fan_out`` is a number or a function of the parameters.
    """
    if callable(name):
        return _build(name, None, options)
    if name is not None and not isinstance(name, str):
        raise TaskDefinitionError(f"@task: the task type must be a string, got {name!r}")

    def decorate(fn: TaskFn[P, R]) -> TaskFunction[P, R]:
        return cast(TaskFunction[P, R], _build(fn, name, options))

    return decorate


def _build(fn: Any, name: str | None, options: dict[str, Any]) -> Any:
    label = f"@task function {getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
    if not inspect.iscoroutinefunction(fn):
        raise TaskDefinitionError(f"{label} must be 'async def'")
    params_model, result_model = _models(fn, label)
    task_type = name if name is not None else fn.__name__.lower()
    if not TASK_TYPE_PATTERN.match(task_type):
        raise TaskDefinitionError(
            f"{label}: task type {task_type!r} must match {TASK_TYPE_PATTERN.pattern} (a lower-case name)"
        )
    namespace = _namespace(fn, task_type, params_model, result_model, options, label)
    cls: type[BackgroundTaskExecutable[Any, Any]] = type(fn.__name__, (BackgroundTaskExecutable,), namespace)
    cls.__qualname__ = f"{fn.__qualname__}.executable"
    try:
        cls.validate_definition()
    except TypeError as exc:
        raise TaskDefinitionError(f"{label}: {exc}") from exc
    fn.executable = cls
    fn.task_type = task_type
    return fn


def _models(fn: Any, label: str) -> tuple[type[BaseModel], type[BaseModel]]:
    """(Params, Result) from the annotations of ``fn(ctx, params) -> result``.

    Only the params and return annotations are resolved, each on its own against the
    function's module globals: the ctx annotation is never looked at, so ``TaskContext`` may
    be imported under ``if TYPE_CHECKING:``."""
    params_name = _params_parameter(fn, label)
    annotations = inspect.get_annotations(fn)
    module_globals = getattr(inspect.unwrap(fn), "__globals__", {})
    models = []
    for what, key in (("parameter " + repr(params_name), params_name), ("return", "return")):
        model = annotations.get(key)
        if isinstance(model, str):
            try:
                model = eval(model, module_globals)  # noqa: S307 -- what typing.get_type_hints does
            except Exception as exc:  # NameError for a model defined where the module cannot see it
                raise TaskDefinitionError(
                    f"{label}: cannot resolve the {what} annotation {annotations[key]!r} ({exc}); "
                    "define the model at module level, imported at run time (not under TYPE_CHECKING)"
                ) from exc
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            shown = "missing" if model is None else repr(model)
            raise TaskDefinitionError(
                f"{label}: the {what} annotation must be a pydantic BaseModel subclass, got {shown}"
            )
        models.append(model)
    return models[0], models[1]


def _params_parameter(fn: Any, label: str) -> str:
    """The name of the params parameter; refuses a signature the worker cannot call as
    ``fn(ctx, params)`` (other parameters need defaults)."""
    parameters = inspect.signature(fn).parameters.values()
    positional = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(positional) != 2:
        raise TaskDefinitionError(
            f"{label} must take two arguments: (ctx: TaskContext, params: Model); "
            f"it requires {[p.name for p in positional]} (give the others defaults)"
        )
    keyword_only = [p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if keyword_only:
        raise TaskDefinitionError(
            f"{label}: keyword-only parameter(s) {keyword_only} have no default; the worker calls it "
            "as (ctx, params) only: give them defaults or remove them"
        )
    return positional[1].name


def _namespace(
    fn: Any,
    task_type: str,
    params_model: type[BaseModel],
    result_model: type[BaseModel],
    options: dict[str, Any],
    label: str,
) -> dict[str, Any]:
    """The generated class's attributes: the task's options, ``execute`` and (if given) ``fan_out``."""
    unknown = set(options) - _OPTIONS
    if unknown:
        raise TaskDefinitionError(f"{label}: unknown option(s) {sorted(unknown)}; known: {sorted(_OPTIONS)}")
    description = options.get("description")
    if description is None:
        description = (inspect.getdoc(fn) or "").strip().split("\n", 1)[0]
    timeout = options.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise TaskDefinitionError(f"{label}: timeout must be positive seconds or None, got {timeout!r}")

    async def execute(self: Any, ctx: TaskContext[Any]) -> BaseModel:
        return cast(BaseModel, await fn(ctx, ctx.parameters))

    namespace: dict[str, Any] = {
        "__module__": fn.__module__,
        "__doc__": fn.__doc__,
        "task_type": task_type,
        "Params": params_model,
        "Result": result_model,
        "queue": options.get("queue", "default"),
        "timeout": timeout,
        "description": description,
        "retry_policy": options.get("retry_policy"),
        "retryable_exceptions": _exceptions(options.get("retryable_exceptions", ()), label),
        "non_retryable_exceptions": _exceptions(options.get("non_retryable_exceptions", ()), label),
        "rate_limits": _rate_limits(options.get("rate_limits", ())),
        "ProgressModel": options.get("progress_model", Progress),
        "execute": execute,
        "function": staticmethod(fn),
    }
    if "fan_out" in options:  # else the base class's: the API then skips validating parameters for it
        namespace["fan_out"] = _fan_out(options["fan_out"], label)
    return namespace


def _fan_out(fan_out: int | Callable[[Any], int], label: str) -> classmethod[Any, [BaseModel], int]:
    """The ``fan_out`` classmethod for the ``fan_out`` option: a constant or a function of the params."""
    if not (callable(fan_out) or (isinstance(fan_out, int) and fan_out >= 0)):
        raise TaskDefinitionError(f"{label}: fan_out must be an int >= 0 or a function, got {fan_out!r}")

    def count_children(cls: Any, params: BaseModel) -> int:
        return int(fan_out(params)) if callable(fan_out) else fan_out

    return classmethod(count_children)


_OPTIONS = frozenset(
    {
        "timeout",
        "retry_policy",
        "retryable_exceptions",
        "non_retryable_exceptions",
        "rate_limits",
        "queue",
        "description",
        "progress_model",
        "fan_out",
    }
)


def _exceptions(value: Exceptions, label: str) -> tuple[type[BaseException], ...]:
    found = (value,) if isinstance(value, type) else tuple(value)
    for exc in found:
        if not (isinstance(exc, type) and issubclass(exc, BaseException)):
            raise TaskDefinitionError(f"{label}: {exc!r} is not an exception class")
    return found


def _rate_limits(value: RateLimit | Iterable[RateLimit]) -> tuple[RateLimit, ...]:
    return (value,) if isinstance(value, RateLimit) else tuple(value)


def executable_of(obj: object) -> type[BackgroundTaskExecutable[Any, Any]] | None:
    """The executable class ``obj`` stands for: itself, or a ``@task`` function's ``executable``."""
    if isinstance(obj, type) and issubclass(obj, BackgroundTaskExecutable):
        return obj
    generated = getattr(obj, "executable", None) if inspect.isfunction(obj) else None
    if isinstance(generated, type) and issubclass(generated, BackgroundTaskExecutable):
        return generated
    return None
