"""What the routers share: the runtime dependency and the no-NUL text pattern."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from taskplatform.runtime import Runtime

#: PostgreSQL text cannot hold NUL: refuse it as bad input, not a store fault.
NO_NUL = r"^[^\x00]*$"


def get_runtime(request: Request) -> Runtime:
    """The runtime the app owns (set by its lifespan)."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
