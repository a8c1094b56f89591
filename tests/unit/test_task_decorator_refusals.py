"""What ``@task`` refuses, naming the function: a broken contract, bad options, models it
cannot see, parameters the worker cannot fill."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from taskplatform import RateLimit, TaskContext, task
from taskplatform.errors import ConfigError
from taskplatform.tasks.decorator import TaskDefinitionError
from taskplatform.tasks.registry import ExecutableRegistry
from taskplatform.testing import run_task
from tests.support.task_modules import TYPE_CHECKING_MODULE, write_module


class Greet(BaseModel):
    name: str
    children: int = 0


class Greeting(BaseModel):
    text: str


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
    assert f"{__name__}.{fn.__name__}" in str(caught.value)


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
