"""``@task`` and the generic class form: what they build, how discovery finds them, what they refuse."""

from __future__ import annotations

import importlib
import pickle
import textwrap
import uuid
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import pytest
from pydantic import BaseModel, field_validator

import taskplatform
from taskplatform import Executable, Progress, RateLimit, RetryPolicy, TaskContext, task
from taskplatform.api.ratelimit import submission_weight
from taskplatform.errors import ConfigError
from taskplatform.tasks.decorator import TaskDefinitionError, executable_of
from taskplatform.tasks.registry import ExecutableRegistry
from taskplatform.testing import FakeTaskContext, run_task


class Greet(BaseModel):
    name: str
    children: int = 0


class Greeting(BaseModel):
    text: str


class Mood(Progress):
    mood: str = "fine"


class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


@task("greet_full", timeout=30, queue="mail", retry_policy=RetryPolicy(max_attempts=5),
      retryable_exceptions=Flaky, non_retryable_exceptions=(Fatal, KeyError),
      rate_limits=RateLimit("10/s"), progress_model=Mood, fan_out=lambda p: p.children)  # fmt: skip
async def greet_full(ctx: TaskContext[Greet], params: Greet) -> Greeting:
    """Greets someone by name.

    The rest of the docstring is not the description.
    """
    await ctx.update_progress({"percent": 50, "mood": "cheerful"})
    return Greeting(text=f"Hello, {params.name}!")


@task
async def say_hello(ctx: TaskContext[Greet], params: Greet) -> Greeting:
    return Greeting(text=f"hi {params.name}")


@task(name="named.by-keyword", description="given", fan_out=3)
async def keyword_named(ctx: TaskContext[Greet], params: Greet) -> Greeting:
    """Not this."""
    return Greeting(text=params.name)


# ------------------------------------------------------------ what it builds
def test_the_options_become_the_executable_class_attributes() -> None:
    cls = greet_full.executable

    cls.validate_definition()
    assert issubclass(cls, Executable)
    assert (cls.task_type, cls.Params, cls.Result) == ("greet_full", Greet, Greeting)
    assert (cls.timeout, cls.queue, cls.retry_policy) == (30, "mail", RetryPolicy(max_attempts=5))
    assert cls.retryable_exceptions == (Flaky,)
    assert cls.non_retryable_exceptions == (Fatal, KeyError)
    assert cls.rate_limits == (RateLimit("10/s"),)
    assert cls.ProgressModel is Mood
    assert cls.description == "Greets someone by name."
    assert cls.fan_out(Greet(name="a", children=4)) == 4
    assert greet_full.task_type == "greet_full"


def test_defaults_type_from_the_function_name_and_platform_defaults() -> None:
    cls = say_hello.executable

    assert cls.task_type == say_hello.task_type == "say_hello"
    assert (cls.timeout, cls.queue, cls.retry_policy, cls.rate_limits) == (None, "default", None, ())
    assert (cls.retryable_exceptions, cls.non_retryable_exceptions) == ((), ())
    assert cls.ProgressModel is Progress and cls.description == ""
    assert cls.fan_out(Greet(name="a", children=9)) == 0


def test_name_keyword_explicit_description_and_constant_fan_out() -> None:
    cls = keyword_named.executable

    assert (cls.task_type, cls.description) == ("named.by-keyword", "given")
    assert cls.fan_out(Greet(name="a")) == 3


async def test_the_decorated_name_is_still_the_function_and_can_be_called_directly() -> None:
    ctx = FakeTaskContext(Greet(name="Ada"), progress_model=Mood)

    assert await greet_full(ctx, Greet(name="Ada")) == Greeting(text="Hello, Ada!")
    assert ctx.progress == [Mood(percent=50, mood="cheerful")]
    assert greet_full.executable.function is greet_full


async def test_the_generated_execute_passes_the_context_parameters() -> None:
    ctx = FakeTaskContext(Greet(name="Bo"))
    assert await say_hello.executable().execute(ctx) == Greeting(text="hi Bo")


def test_executable_and_function_pickle_by_reference() -> None:
    assert pickle.loads(pickle.dumps(greet_full.executable)) is greet_full.executable
    assert pickle.loads(pickle.dumps(greet_full)) is greet_full
    assert greet_full.executable.__module__ == __name__
    assert greet_full.executable.__qualname__ == "greet_full.executable"


def test_executable_of_accepts_classes_and_task_functions_only() -> None:
    assert executable_of(say_hello) is say_hello.executable
    assert executable_of(say_hello.executable) is say_hello.executable

    async def plain(ctx: Any, params: Any) -> Any: ...

    assert executable_of(plain) is None
    assert executable_of(Greet) is None
    assert executable_of("say_hello") is None


def test_the_public_names_load_lazily_from_the_package() -> None:
    assert taskplatform.Executable is Executable and taskplatform.task is task
    assert "RetryPolicy" in dir(taskplatform)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = taskplatform.nothing_here


# ------------------------------------------------------------ registration
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    name = f"user_tasks_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


USER_MODULE = """
    from __future__ import annotations

    from pydantic import BaseModel

    from taskplatform import Executable, TaskContext, task
    from tests.unit.test_task_decorator import say_hello  # imported: registered by its own module


    class In(BaseModel):
        n: int


    class Out(BaseModel):
        doubled: int


    @task("double")
    async def double(ctx: TaskContext, params: In) -> Out:
        return Out(doubled=2 * params.n)


    class Triple(Executable[In, Out]):
        task_type = "triple"

        async def execute(self, ctx: TaskContext[In]) -> Out:
            return Out(doubled=3 * ctx.parameters.n)
"""


async def test_a_module_of_decorated_functions_and_generic_classes_loads_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = write_module(tmp_path, monkeypatch, USER_MODULE)
    registry = ExecutableRegistry()

    assert registry.load_module(module) == 2
    assert registry.task_types() == ["double", "triple"]
    double = registry.get("double")
    assert double.__module__ == module
    ctx = FakeTaskContext(double.Params(n=4))
    assert (await double().execute(ctx)).model_dump() == {"doubled": 8}


def test_a_decorated_function_with_bad_annotations_fails_discovery_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = write_module(
        tmp_path,
        monkeypatch,
        """
        from taskplatform import task

        @task
        async def broken_greeting(ctx, params: dict) -> str:
            return "no"
        """,
    )
    with pytest.raises(ConfigError, match=rf"{module}\.broken_greeting: the parameter 'params' annotation"):
        ExecutableRegistry.discover([module], entry_point_group=None)


class FakeEntryPoint:
    def __init__(self, target: object) -> None:
        self.name, self.value, self.target = "ep", "somewhere:thing", target

    def load(self) -> object:
        return self.target


def test_an_entry_point_may_name_a_decorated_function(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("taskplatform.tasks.registry.entry_points", lambda group: [FakeEntryPoint(say_hello)])
    registry = ExecutableRegistry()

    assert registry.load_entry_points() == 1
    assert registry.get("say_hello") is say_hello.executable


def test_register_takes_a_decorated_function_and_returns_it_unchanged() -> None:
    registry = ExecutableRegistry([say_hello])
    assert registry.register(say_hello) is say_hello
    assert registry.register(FromGenerics) is FromGenerics
    assert registry.task_types() == ["from_generics", "say_hello"]
    assert registry.get("say_hello") is say_hello.executable


async def test_register_stacked_over_task_leaves_the_name_bound_to_the_function() -> None:
    registry = ExecutableRegistry()

    @registry.register
    @task("stacked")
    async def stacked(ctx: TaskContext[Greet], params: Greet) -> Greeting:
        return Greeting(text=params.name)

    assert await stacked(FakeTaskContext(Greet(name="x")), Greet(name="x")) == Greeting(text="x")
    assert registry.get("stacked") is stacked.executable


def test_a_reloaded_module_registered_again_is_named_as_a_different_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = importlib.import_module(write_module(tmp_path, monkeypatch, USER_MODULE))
    registry = ExecutableRegistry([module.double])
    reloaded = importlib.reload(module)

    qualified = f"{module.__name__}.double.executable"
    with pytest.raises(ConfigError) as caught:
        registry.register(reloaded.double)
    assert str(caught.value) == (
        f"task type 'double' registered twice: {qualified} and a different {qualified} (module reloaded?)"
    )


# ------------------------------------------------------------ refusals
class NotAModel:
    pass


async def takes_dict(ctx: TaskContext[Any], params: dict[str, Any]) -> Greeting:
    return Greeting(text="")


async def returns_str(ctx: TaskContext[Any], params: Greet) -> str:
    return ""


async def returns_nothing_declared(ctx: TaskContext[Any], params: Greet):  # type: ignore[no-untyped-def]
    return Greeting(text="")


async def params_unannotated(ctx, params) -> Greeting:  # type: ignore[no-untyped-def]
    return Greeting(text="")


async def one_argument(params: Greet) -> Greeting:
    return Greeting(text="")


async def three_arguments(ctx: TaskContext[Any], params: Greet, extra: int) -> Greeting:
    return Greeting(text="")


def not_async(ctx: TaskContext[Any], params: Greet) -> Greeting:
    return Greeting(text="")


async def _private(ctx: TaskContext[Any], params: Greet) -> Greeting:
    return Greeting(text="")


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (not_async, "not_async must be 'async def'"),
        (takes_dict, "takes_dict: the parameter 'params' annotation must be a pydantic BaseModel subclass"),
        (
            returns_str,
            "returns_str: the return annotation must be a pydantic BaseModel subclass, got <class 'str'>",
        ),
        (returns_nothing_declared, "returns_nothing_declared: the return annotation .* got missing"),
        (params_unannotated, "params_unannotated: the parameter 'params' annotation .* got missing"),
        (one_argument, "one_argument must take two arguments"),
        (three_arguments, "three_arguments must take two arguments"),
        (_private, "_private: task type '_private' must match"),
    ],
)
def test_functions_that_break_the_contract_are_refused_naming_them(fn: Any, message: str) -> None:
    with pytest.raises(TaskDefinitionError, match=message) as caught:
        task(fn)
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, TypeError)
    assert f"test_task_decorator.{fn.__name__}" in str(caught.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "Bad Type"}, "task type 'Bad Type' must match"),
        ({"name": 3}, "the task type must be a string, got 3"),
        ({"queue": "Not A Queue"}, "queue must match"),
        ({"timeout": 0}, "timeout must be positive seconds or None, got 0"),
        ({"timeout": "30"}, "timeout must be positive seconds or None"),
        ({"fan_out": -1}, "fan_out must be an int >= 0 or a function, got -1"),
        ({"retryable_exceptions": (ValueError, int)}, "<class 'int'> is not an exception class"),
        ({"rate_limits": (RateLimit("1/s"), RateLimit("2/s"))}, "rate_limits"),
        ({"retries": 3}, r"unknown option\(s\) \['retries'\]"),
    ],
)
def test_bad_options_are_refused_naming_the_function(options: dict[str, Any], message: str) -> None:
    with pytest.raises(TaskDefinitionError, match=message) as caught:
        task(**options)(returns_greeting)
    if "name" not in options or isinstance(options["name"], str):
        assert "returns_greeting" in str(caught.value)


async def returns_greeting(ctx: TaskContext[Any], params: Greet) -> Greeting:
    return Greeting(text="")


def test_models_the_module_cannot_see_are_refused_with_a_hint() -> None:
    class LocalParams(BaseModel):  # string annotations of this module cannot resolve it
        x: int

    async def local_task(ctx: TaskContext[Any], params: LocalParams) -> Greeting:
        return Greeting(text="")

    with pytest.raises(
        TaskDefinitionError,
        match="local_task: cannot resolve the parameter 'params' annotation 'LocalParams' "
        r"\(name 'LocalParams' is not defined\); define the model at module level",
    ):
        task(local_task)


TYPE_CHECKING_MODULE = """
    from __future__ import annotations

    from typing import TYPE_CHECKING

    from pydantic import BaseModel

    from taskplatform import task

    if TYPE_CHECKING:
        from taskplatform import TaskContext
        {hidden}


    class In(BaseModel):
        n: int


    class Out(BaseModel):
        doubled: int


    @task("double")
    async def double(ctx: TaskContext[In], params: {params}) -> {result}:
        return Out(doubled=2 * params.n)
"""


async def test_a_context_annotation_imported_only_for_type_checking_is_not_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = TYPE_CHECKING_MODULE.format(hidden="", params="In", result="Out")
    module = write_module(tmp_path, monkeypatch, source)
    registry = ExecutableRegistry.discover([module], entry_point_group=None)

    assert await run_task(registry.get("double"), {"n": 4}) == registry.get("double").Result(doubled=8)


@pytest.mark.parametrize(
    ("params", "result", "message"),
    [
        ("Hidden", "Out", "cannot resolve the parameter 'params' annotation 'Hidden'"),
        ("In", "Hidden", "cannot resolve the return annotation 'Hidden'"),
    ],
)
def test_a_model_imported_only_for_type_checking_is_refused_naming_the_annotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params: str, result: str, message: str
) -> None:
    source = TYPE_CHECKING_MODULE.format(
        hidden="from pydantic import BaseModel as Hidden", params=params, result=result
    )
    module = write_module(tmp_path, monkeypatch, source)

    with pytest.raises(ConfigError, match=rf"{module}\.double: {message} \(name 'Hidden' is not defined\); .*"
                       r"not under TYPE_CHECKING"):  # fmt: skip
        ExecutableRegistry.discover([module], entry_point_group=None)


async def required_keyword(ctx: TaskContext[Any], params: Greet, *, extra: int) -> Greeting:
    return Greeting(text="")


async def only_star_args(*args: Any) -> Greeting:
    return Greeting(text="")


async def optional_extras(
    ctx: TaskContext[Greet], params: Greet, prefix: str = "hi ", *rest: Any, suffix: str = "!", **more: Any
) -> Greeting:
    return Greeting(text=f"{prefix}{params.name}{suffix}")


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (required_keyword, r"required_keyword: keyword-only parameter\(s\) \['extra'\] have no default"),
        (only_star_args, r"only_star_args must take two arguments: .*; it requires \[\]"),
        (
            three_arguments,
            r"three_arguments must take two arguments: .*; it requires \['ctx', 'params', 'extra'\]",
        ),
    ],
)
def test_parameters_the_worker_cannot_fill_are_refused_at_decoration(fn: Any, message: str) -> None:
    with pytest.raises(TaskDefinitionError, match=message):
        task(fn)


async def test_extra_parameters_with_defaults_are_accepted() -> None:
    decorated = task("optional_extras")(optional_extras)
    assert await run_task(decorated, {"name": "Ada"}) == Greeting(text="hi Ada!")


# ------------------------------------------------------------ fan_out
class CountedParams(BaseModel):
    validated: ClassVar[int] = 0
    name: str

    @field_validator("name")
    @classmethod
    def count(cls, value: str) -> str:
        CountedParams.validated += 1
        return value


@task("no_fan_out")
async def no_fan_out(ctx: TaskContext[CountedParams], params: CountedParams) -> Greeting:
    return Greeting(text=params.name)


def test_without_the_fan_out_option_the_base_class_fan_out_is_inherited() -> None:
    registry = ExecutableRegistry([no_fan_out, say_hello, keyword_named])
    before = CountedParams.validated

    assert "fan_out" not in vars(no_fan_out.executable) and "fan_out" in vars(keyword_named.executable)
    assert submission_weight({"task_type": "no_fan_out", "parameters": {"name": "a"}}, registry) == 1
    assert CountedParams.validated == before  # the submit route validates them once, later
    assert submission_weight({"task_type": "named.by-keyword", "parameters": {"name": "a"}}, registry) == 4


# ------------------------------------------------------------ type checking
@pytest.mark.slow
def test_a_bare_task_context_annotation_passes_strict_type_checking(tmp_path: Path) -> None:
    source = TYPE_CHECKING_MODULE.format(hidden="", params="In", result="Out").replace(
        "TaskContext[In]", "TaskContext"
    )
    (tmp_path / "bare_context.py").write_text(textwrap.dedent(source))
    config = Path(__file__).resolve().parents[2] / "pyproject.toml"
    from mypy import api as mypy_api  # imported here: only this test needs it

    out, err, status = mypy_api.run(
        [
            "--strict",
            "--config-file",
            str(config),
            "--cache-dir",
            str(tmp_path / "cache"),
            str(tmp_path / "bare_context.py"),
        ]
    )
    assert status == 0, out + err


# ------------------------------------------------------------ the class form
class FromGenerics(Executable[Greet, Greeting]):
    task_type = "from_generics"

    async def execute(self, ctx: TaskContext[Greet]) -> Greeting:
        return Greeting(text=ctx.parameters.name)


class Nested(Executable["Nested.Params", "Nested.Result"]):
    task_type = "nested"

    class Params(BaseModel):
        a: int

    class Result(BaseModel):
        b: int

    async def execute(self, ctx: TaskContext[Nested.Params]) -> Nested.Result:
        return self.Result(b=ctx.parameters.a)


class Both(Executable[Greet, Greeting]):
    task_type = "both"
    Params = Greet
    Result = Greeting

    async def execute(self, ctx: TaskContext[Greet]) -> Greeting:
        return Greeting(text="")


def test_the_class_form_takes_params_and_result_from_its_generic_arguments() -> None:
    FromGenerics.validate_definition()
    assert (FromGenerics.Params, FromGenerics.Result) == (Greet, Greeting)


def test_nested_models_and_matching_declarations_still_work() -> None:
    Nested.validate_definition()
    Both.validate_definition()
    assert Nested.Params.__qualname__ == "Nested.Params"
    assert (Both.Params, Both.Result) == (Greet, Greeting)


def test_subclasses_inherit_models_and_type_variables_leave_them_open() -> None:
    class Child(FromGenerics):
        task_type = "child"

    class Base(Executable[Any, Any]):
        pass

    assert (Child.Params, Child.Result) == (Greet, Greeting)
    assert not hasattr(Base, "Params")


def test_nested_models_that_disagree_with_the_generic_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="Disagrees.Result is Greet but the generic argument says Greeting"):

        class Disagrees(Executable[Greet, Greeting]):
            task_type = "disagrees"
            Result = Greet

            async def execute(self, ctx: TaskContext[Greet]) -> Greeting:
                return Greeting(text="")


def test_nested_models_may_be_subclasses_of_the_generic_arguments() -> None:
    class Broad(Executable[BaseModel, BaseModel]):
        task_type = "broad"

        class Params(BaseModel):
            a: int

        class Result(BaseModel):
            b: int

        async def execute(self, ctx: TaskContext[BaseModel]) -> BaseModel:
            return self.Result(b=1)

    Broad.validate_definition()
    assert (Broad.Params.__qualname__, Broad.Result.__qualname__) == (
        "test_nested_models_may_be_subclasses_of_the_generic_arguments.<locals>.Broad.Params",
        "test_nested_models_may_be_subclasses_of_the_generic_arguments.<locals>.Broad.Result",
    )


P = TypeVar("P", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)


class ResultFirst(Executable[P, R], Generic[R, P]):
    """An intermediate generic class whose type variables are in the other order."""


class Reordered(ResultFirst[Greeting, Greet]):
    task_type = "reordered"

    async def execute(self, ctx: TaskContext[Greet]) -> Greeting:
        return Greeting(text=ctx.parameters.name)


class Chained(ResultFirst[R, Greet], Generic[R]):
    """Binds one type variable, leaves the other open."""


class ChainedEnd(Chained[Greeting]):
    task_type = "chained_end"

    async def execute(self, ctx: TaskContext[Greet]) -> Greeting:
        return Greeting(text="")


def test_generic_arguments_are_read_through_intermediate_generic_classes() -> None:
    assert not hasattr(ResultFirst, "Params") and not hasattr(Chained, "Result")
    assert (Chained.Params, Reordered.Params, Reordered.Result) == (Greet, Greet, Greeting)
    assert (ChainedEnd.Params, ChainedEnd.Result) == (Greet, Greeting)
    Reordered.validate_definition()
    ChainedEnd.validate_definition()


def test_a_nested_model_that_is_not_a_class_is_refused_naming_it() -> None:
    with pytest.raises(TypeError, match="NotAClass.Params is 'Greet' but the generic argument says Greet"):

        class NotAClass(Executable[Greet, Greeting]):
            task_type = "not_a_class"
            Params = "Greet"  # type: ignore[assignment]

            async def execute(self, ctx: TaskContext[Greet]) -> Greeting:
                return Greeting(text="")
