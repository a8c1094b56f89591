"""``docker compose config`` on ``deploy/docker-compose.yml``, where a compose tool is installed
(the docker CLI's plugin or the standalone ``docker-compose``; no Docker engine is needed).
``scripts/compose-tool`` installs one where it can."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.stack_files import COMPOSE_FILE, REQUIRED_SECRETS

#: 32+ bytes, as the API requires of an HS256 secret; only ever used to render the compose file.
DUMMY_JWT_SECRET = "compose-config-check-secret-0123456789abcdef"

#: Every required secret, with a value only ever used to render the compose file.
DUMMY_SECRETS = {
    "TASKPLATFORM_JWT_SECRET": DUMMY_JWT_SECRET,
    "RABBITMQ_USER": "compose-check-rabbitmq-user",
    "RABBITMQ_PASSWORD": "compose-check-rabbitmq-password",
    "GRAFANA_ADMIN_USER": "compose-check-grafana-user",
    "GRAFANA_ADMIN_PASSWORD": "compose-check-grafana-password",
}
assert set(DUMMY_SECRETS) == set(REQUIRED_SECRETS)

#: The ports published beyond the host's loopback: the HTTP API's and the gRPC front door's.
PUBLIC_PORTS = {("api", 8000), ("grpc", 50051)}


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


def _environ(**overrides: str) -> dict[str, str]:
    """This process's environment without any of the stack's secrets, plus ``overrides``."""
    return {**{k: v for k, v in os.environ.items() if k not in DUMMY_SECRETS}, **overrides}


def _run_config(
    tool: list[str], env: dict[str, str], *, quiet: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tool, "-f", str(COMPOSE_FILE), "config", *(["--quiet"] if quiet else [])],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_compose_config_renders_with_every_secret(compose_tool: list[str]) -> None:
    result = _run_config(compose_tool, _environ(**DUMMY_SECRETS))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("secret", REQUIRED_SECRETS)
def test_compose_config_refuses_without(compose_tool: list[str], secret: str) -> None:
    others = {k: v for k, v in DUMMY_SECRETS.items() if k != secret}
    for env in (_environ(**others), _environ(**others, **{secret: ""})):  # unset, then empty
        result = _run_config(compose_tool, env)
        assert result.returncode != 0, f"compose renders without {secret}"
        assert secret in result.stderr


@pytest.fixture(scope="module")
def rendered(compose_tool: list[str]) -> dict[str, Any]:
    """The compose file as the tool renders it, every secret set."""
    result = _run_config(compose_tool, _environ(**DUMMY_SECRETS), quiet=False)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def _published(port: Any) -> tuple[str, int | None, int]:
    """(host address, host port, container port) of a rendered ``ports`` entry, either form."""
    if isinstance(port, dict):
        published = port.get("published")
        return str(port.get("host_ip") or ""), int(published) if published else None, int(port["target"])
    parts = str(port).split("/", 1)[0].split(":")
    target = int(parts[-1])
    if len(parts) == 1:
        return "", None, target
    host_ip = ":".join(parts[:-2])
    return host_ip, int(parts[-2]) if parts[-2] else None, target


def test_rendered_stack_publishes_only_the_front_doors_beyond_loopback(rendered: dict[str, Any]) -> None:
    exposed = []
    for name, service in rendered["services"].items():
        for port in service.get("ports") or []:
            host_ip, _, target = _published(port)
            if host_ip != "127.0.0.1" and (name, target) not in PUBLIC_PORTS:
                exposed.append(f"{name}: {port}")
    assert not exposed, f"published beyond the host's loopback: {exposed}"
    assert [_published(p)[2] for p in rendered["services"]["api"]["ports"]] == [8000]
    mongo = rendered["services"]["mongo"]
    assert not mongo.get("ports"), "MongoDB is not published"
    assert all(rendered["networks"][n].get("internal") for n in mongo["networks"]), mongo["networks"]


_DEFAULT_LOGINS = ("guest", "admin")
_CREDENTIAL_KEY = re.compile(r"(?i)PASS|SECRET|_USER$")


def test_rendered_stack_has_no_default_credentials(rendered: dict[str, Any]) -> None:
    secrets = set(DUMMY_SECRETS.values())
    found = []
    for name, service in rendered["services"].items():
        for key, value in (service.get("environment") or {}).items():
            value = "" if value is None else str(value)
            if value.lower() in _DEFAULT_LOGINS or "guest" in value.lower():
                found.append(f"{name}: {key}={value}")
            if _CREDENTIAL_KEY.search(key) and value not in secrets:
                found.append(f"{name}: {key} is not from the environment: {value}")
            url = urlsplit(value) if "://" in value else None
            if url and (url.username or url.password):
                if (url.username, url.password) != (
                    DUMMY_SECRETS["RABBITMQ_USER"],
                    DUMMY_SECRETS["RABBITMQ_PASSWORD"],
                ):
                    found.append(f"{name}: {key} has credentials not from the environment: {value}")
    assert not found, f"default credentials: {found}"
    env = {name: service.get("environment") or {} for name, service in rendered["services"].items()}
    assert env["rabbitmq"]["RABBITMQ_DEFAULT_USER"] == DUMMY_SECRETS["RABBITMQ_USER"]
    assert env["rabbitmq"]["RABBITMQ_DEFAULT_PASS"] == DUMMY_SECRETS["RABBITMQ_PASSWORD"]
    assert env["grafana"]["GF_SECURITY_ADMIN_PASSWORD"] == DUMMY_SECRETS["GRAFANA_ADMIN_PASSWORD"]
    for name in ("api", "worker", "grpc"):
        url = urlsplit(env[name]["TASKPLATFORM_AMQP_URL"])
        assert (url.username, url.password) == (
            DUMMY_SECRETS["RABBITMQ_USER"],
            DUMMY_SECRETS["RABBITMQ_PASSWORD"],
        )
