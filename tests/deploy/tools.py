"""Commands the deployment tests run (Debian's ``prometheus`` package: ``promtool``,
``prometheus``; ``scripts/apt-tool`` installs it). A missing one skips its tests loudly on a
developer machine and fails them under ``CI=true``."""

from __future__ import annotations

import shutil

import pytest

from tests.support.services import in_ci


def require_command(name: str, package: str) -> str:
    """The path of ``name``; skip (locally) or fail (CI) when it is not installed."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is required: install Debian's {package} (scripts/apt-tool {name} {package} ...)"
    if in_ci():
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(f"SKIPPED LOUDLY: {message}")
