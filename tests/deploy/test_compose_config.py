"""``docker compose config`` on ``deploy/docker-compose.yml``, where a compose tool is installed
(the docker CLI's plugin or the standalone ``docker-compose``; no Docker engine is needed).
``scripts/compose-tool`` installs one where it can."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.deploy.test_stack import COMPOSE_FILE

#: 32+ bytes, as the API requires of an HS256 secret; only ever used to render the compose file.
DUMMY_JWT_SECRET = "compose-config-check-secret-0123456789abcdef"


def _compose_tool() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.fixture(scope="module")
def compose_tool() -> list[str]:
    tool = _compose_tool()
    if tool is None:
        # Not a missing service: there is nothing to start. Skipped under CI=true as well.
        pytest.skip("docker compose is not installed here: the compose file was checked structurally only")
    return tool


def _run_config(tool: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tool, "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_compose_config_renders_with_a_jwt_secret(compose_tool: list[str]) -> None:
    result = _run_config(compose_tool, {**os.environ, "TASKPLATFORM_JWT_SECRET": DUMMY_JWT_SECRET})
    assert result.returncode == 0, result.stderr


def test_compose_config_refuses_without_a_jwt_secret(compose_tool: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TASKPLATFORM_JWT_SECRET"}
    result = _run_config(compose_tool, env)
    assert result.returncode != 0
    assert "TASKPLATFORM_JWT_SECRET" in result.stderr
