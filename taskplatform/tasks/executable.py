"""The executable contract: typed parameters in, typed result out."""

from __future__ import annotations

import inspect
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, Generic, Protocol, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypeVar as DefaultedTypeVar

from taskplatform.auth.principal import Role
from taskplatform.ratelimit.declarations import RateLimit, check_rate_limits
from taskplatform.retry import RetryPolicy

P = TypeVar("P", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)
#: Defaults to BaseModel (PEP 696), so a bare ``ctx: TaskContext`` passes strict type checking.
P_co = DefaultedTypeVar("P_co", bound=BaseModel, covariant=True, default=BaseModel)

TASK_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]{0,127}$")


class Progress(BaseModel):
    """Progress an executable reports. Subclass it to carry typed extra fields."""

    model_config = ConfigDict(extra="forbid")

    percent: float | None = Field(default=None, ge=0, le=100)
    message: str | None = Field(default=None, max_length=1000)


class TaskContext(Protocol[P_co]):
    """What an executable sees of the platform while it runs."""

    @property
    def task_id(self) -> str: ...
    @property
    def task_type(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def user_id(self) -> str | None: ...
    @property
    def parameters(self) -> P_co: ...
    @property
    def received_at(self) -> datetime:
        """When this worker received the delivery that runs this attempt (UTC): the time until
        ``execute`` starts is how long the message was held here (rate limit, priorities, claim)."""
        ...

    @property
    def cancelled(self) -> bool:
        """True once cancellation of this task was requested; stop soon when it is."""
        ...

    async def update_progress(self, progress: Progress | Mapping[str, Any]) -> None:
        """Record progress (stored and published as an event).

        Validated against the executable's ``ProgressModel``. Throttled: at most one write
        per ``progress_interval`` seconds; the latest value in between is kept and written
        at the end of the interval (and before the attempt settles).
        """
        ...

    async def submit_sub_task(
        self, task_type: str, parameters: BaseModel | Mapping[str, Any], *, key: str | None = None
    ) -> str:
        """Create a child task (published through the outbox) and return its id.

        The parent stays RUNNING after ``execute`` returns until every child has finished;
        it then ends COMPLETED, or COMPLETED_WITH_ERRORS when some child did not succeed.
        ``key`` names the child within this parent (default: the call's sequence number),
        so a retried parent that submits the same children again does not duplicate them.
        """
        ...

    async def submit_sub_tasks(
        self,
        task_type: str,
        parameters: Sequence[BaseModel | Mapping[str, Any]],
        *,
        keys: Sequence[str] | None = None,
    ) -> list[str]:
        """``submit_sub_task`` for many children of one type, stored and published in bulk."""
        ...

    def log_info(self, message: str, **fields: Any) -> None:
        """Log with the task's context attached."""
        ...

    def log_error(self, message: str, **fields: Any) -> None:
        """Log an error with the task's context attached."""
        ...


class BackgroundTaskExecutable(ABC, Generic[P, R]):
    """Base class of every task type (exported as ``taskplatform.Executable``).

    Subclasses set ``task_type``, name their pydantic models in the generic arguments
    (``class Foo(Executable[FooParams, FooResult])``: ``Params`` and ``Result`` are taken from
    them) or as nested classes ``Params`` and ``Result``, and implement ``execute``. One
    instance serves every task of its type in a worker, so keep per-task state in locals,
    not on ``self``. The ``@task`` decorator builds such a class from one async function.
    """

    task_type: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    Result: ClassVar[type[BaseModel]]
    #: Work queue group; tasks of types sharing a queue share a RabbitMQ queue.
    queue: ClassVar[str] = "default"
    #: Seconds an attempt may run; None means the platform default.
    timeout: ClassVar[float | None] = None
    #: Model ``update_progress`` validates progress against (subclass Progress for typed fields).
    ProgressModel: ClassVar[type[Progress]] = Progress
    #: Short description, shown in the API's list of task types.
    description: ClassVar[str] = ""
    #: Retry policy; None means the platform default (settings ``retry_*``).
    retry_policy: ClassVar[RetryPolicy | None] = None
    #: Exceptions worth another attempt (timeouts and transient infrastructure faults always are).
    retryable_exceptions: ClassVar[tuple[type[BaseException], ...]] = ()
    #: Exceptions that fail the task at once, even if a retryable type also matches.
    non_retryable_exceptions: ClassVar[tuple[type[BaseException], ...]] = ()
    #: How often attempts may start, per task type or per user: ``(RateLimit("10/s"),
    #: RateLimit("1/s", burst=5, per="user"))``, at most one per scope. A worker holds a
    #: delivery until its slot, or sends it round the delay path (no attempt is counted).
    rate_limits: ClassVar[tuple[RateLimit, ...]] = ()
    #: The least role that may submit tasks of this type through the API (None: any submitter);
    #: such a type is never a sub-task of another (its submitter's role is not known there).
    submit_role: ClassVar[Role | None] = None
    #: Never start an attempt twice: an attempt cut short by a worker's shutdown, lost with its
    #: worker, or whose message comes back while its attempt is (or was) running, fails for good
    #: instead of running again (for side effects that must not repeat, like a host command).
    at_most_once: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for attr, model in zip(("Params", "Result"), _generic_models(cls), strict=True):
            if model is None:
                continue
            declared = cls.__dict__.get(attr)
            if declared is None:
                setattr(cls, attr, model)
            elif not (isinstance(declared, type) and issubclass(declared, model)):
                shown = getattr(declared, "__qualname__", repr(declared))
                raise TypeError(
                    f"{cls.__qualname__}.{attr} is {shown} but the generic argument says "
                    f"{model.__qualname__}: give one of them, or a subclass of the generic argument"
                )

    @abstractmethod
    async def execute(self, ctx: TaskContext[P]) -> R:
        """Run one attempt and return the result."""

    @classmethod
    def fan_out(cls, params: P) -> int:
        """Child tasks a task with ``params`` will submit (``ctx.submit_sub_task(s)``).

        The API charges a submission ``1 + fan_out(params)`` against the caller's submit limit
        (``API_SUBMIT_RATE``), so a parent pays up front for the children it will create and
        those are not charged again. Override it in executables that fan out; keep it cheap
        and never below what ``execute`` submits."""
        return 0

    @classmethod
    def validate_definition(cls) -> None:
        """Raise TypeError when the class does not meet the contract."""
        name = cls.__qualname__
        task_type = getattr(cls, "task_type", None)
        if not isinstance(task_type, str) or not TASK_TYPE_PATTERN.match(task_type):
            raise TypeError(
                f"{name}.task_type must match {TASK_TYPE_PATTERN.pattern} (a lower-case name), "
                f"got {task_type!r}"
            )
        for attr in ("Params", "Result"):
            model = getattr(cls, attr, None)
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise TypeError(f"{name}.{attr} must be a pydantic BaseModel subclass")
        if not inspect.iscoroutinefunction(cls.execute):
            raise TypeError(f"{name}.execute must be 'async def'")
        if inspect.isabstract(cls):
            raise TypeError(f"{name} does not implement execute()")
        if not isinstance(cls.queue, str) or not TASK_TYPE_PATTERN.match(cls.queue):
            raise TypeError(f"{name}.queue must match {TASK_TYPE_PATTERN.pattern}, got {cls.queue!r}")
        check_rate_limits(f"{name}.rate_limits", cls.rate_limits)


def _generic_models(cls: type) -> tuple[type[BaseModel] | None, type[BaseModel] | None]:
    """The (Params, Result) models ``cls``'s own bases give ``BackgroundTaskExecutable[P, R]``;
    None for an argument that is a type variable or a string (a forward reference)."""
    found = _executable_arguments(cls, {})
    if found is None:
        return None, None
    return _model_or_none(found[0]), _model_or_none(found[1])


def _executable_arguments(cls: type, bound: Mapping[object, object]) -> tuple[object, ...] | None:
    """The arguments of the ``BackgroundTaskExecutable[...]`` that ``cls``'s parameterised bases
    lead to, type variables replaced by what ``bound`` gives them. An intermediate generic class
    (``class Base(Executable[P, R], Generic[R, P])``) is followed through its own type
    variables, so ``Base[Out, In]`` gives ``(In, Out)`` whatever their order."""
    for base in cls.__dict__.get("__orig_bases__", ()):
        origin = get_origin(base)
        if not (isinstance(origin, type) and issubclass(origin, BackgroundTaskExecutable)):
            continue
        args = tuple(bound.get(arg, arg) if isinstance(arg, TypeVar) else arg for arg in get_args(base))
        if origin is BackgroundTaskExecutable:
            return args
        parameters = getattr(origin, "__parameters__", ())
        found = _executable_arguments(origin, dict(zip(parameters, args, strict=False)))
        if found is not None:
            return found
    return None


def _model_or_none(arg: object) -> type[BaseModel] | None:
    return arg if isinstance(arg, type) and issubclass(arg, BaseModel) else None
