"""``@task`` and the generic class form: what they build, how discovery finds them, what they refuse."""

from __future__ import annotations

import importlib
import pickle
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, field_validator

import taskplatform
from taskplatform import Executable, Progress, RateLimit, RetryPolicy, TaskContext, task
from taskplatform.api.ratelimit import submission_weight
from taskplatform.errors import ConfigError
from taskplatform.tasks.decorator import executable_of
from taskplatform.tasks.registry import ExecutableRegistry
from taskplatform.testing import FakeTaskContext
from tests.support.task_modules import TYPE_CHECKING_MODULE, write_module


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


class FromGenerics(Executable[Greet, Greeting]):
    task_type = "from_generics"

    async def execute(self, ctx: TaskContext[Greet]) -> Greeting:
        return Greeting(text=ctx.parameters.name)
