"""Task modules a test writes and imports by name (as ``EXECUTOR_MODULES`` would)."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest


def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    """Write ``source`` as a fresh module in ``tmp_path``, importable for this test; its name."""
    name = f"user_tasks_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


#: A decorated task whose context type is imported only for type checking; ``hidden`` may hide a
#: model the same way, ``params``/``result`` name the annotations.
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
