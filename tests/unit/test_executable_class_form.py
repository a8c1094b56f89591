"""The class form: ``Executable[Params, Result]`` takes its models from its generic arguments,
nested ones still work, and what disagrees is refused."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import pytest
from pydantic import BaseModel

from taskplatform import Executable, TaskContext


class Greet(BaseModel):
    name: str
    children: int = 0


class Greeting(BaseModel):
    text: str


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
