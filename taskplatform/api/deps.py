"""What the routers share: the runtime and task-commands dependencies, the answer each command
error gets, and the no-NUL text pattern."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from taskplatform.commands import (
    BulkReplayRefused,
    CommandForbidden,
    TaskCommands,
    TaskConflict,
    TaskNotFound,
)
from taskplatform.deadletters.service import DeadLetterConflict, DeadLetterNotFound
from taskplatform.runtime import Runtime

#: PostgreSQL text cannot hold NUL: refuse it as bad input, not a store fault.
NO_NUL = r"^[^\x00]*$"


async def get_runtime(request: Request) -> Runtime:
    """The runtime the app owns (set by its lifespan). Dependencies are ``async`` here: FastAPI
    runs a plain ``def`` one in a worker thread, a thread hand-off per request."""
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_commands(request: Request) -> TaskCommands:
    """The task commands of this process: the runtime's, so a router mounted on any app that
    holds the runtime in ``app.state.runtime`` answers (nothing else in ``app.state`` is needed)."""
    return (await get_runtime(request)).commands


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
CommandsDep = Annotated[TaskCommands, Depends(get_commands)]


@contextlib.contextmanager
def command_answers() -> Iterator[None]:
    """A command's refusal as its HTTP answer: not found 404, conflict 409, forbidden 403,
    refused 422."""
    try:
        yield
    except (TaskNotFound, DeadLetterNotFound) as exc:
        raise HTTPException(404, str(exc)) from None
    except (TaskConflict, DeadLetterConflict) as exc:
        raise HTTPException(409, str(exc)) from None
    except CommandForbidden as exc:
        raise HTTPException(403, str(exc)) from None
    except BulkReplayRefused as exc:
        raise HTTPException(422, str(exc)) from None
