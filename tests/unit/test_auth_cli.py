"""The CLI side of authentication: ``taskplatform token``, the bearer token the task commands send,
and ``dev`` running without authentication unless told otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from taskplatform.auth import Role
from taskplatform.cli import commands as cli
from tests.api.tokens import SECRET, private_pem, rsa_key, write
from tests.support.fake_api import FakeApi, api_for_cli, cli_environment


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with cli_environment(monkeypatch):
        yield


def decode(token: str, key: Any = SECRET, algorithm: str = "HS256") -> dict[str, Any]:
    return jwt.decode(token, key, algorithms=[algorithm], audience="taskplatform", issuer="taskplatform")


# ---------------------------------------------------------------- taskplatform token
def test_token_prints_an_hs256_token_for_the_subject_and_roles(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TASKPLATFORM_JWT_SECRET", SECRET)
    assert cli.main(["token", "--sub", "alice", "--role", "operator", "--role", "admin", "--ttl", "120"]) == 0
    claims = decode(capsys.readouterr().out.strip())
    assert claims["sub"] == "alice" and claims["roles"] == ["admin", "operator"]
    assert claims["exp"] - claims["iat"] == 120


def test_token_defaults_to_the_submitter_role_for_an_hour(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TASKPLATFORM_JWT_SECRET", SECRET)
    assert cli.main(["token", "--sub", "bob"]) == 0
    claims = decode(capsys.readouterr().out.strip())
    assert claims["roles"] == ["submitter"] and claims["exp"] - claims["iat"] == 3600


def test_token_without_a_secret_is_exit_2_naming_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["token", "--sub", "alice"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "TASKPLATFORM_JWT_SECRET" in captured.err and "--private-key" in captured.err


def test_token_with_a_short_secret_is_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TASKPLATFORM_JWT_SECRET", "short")
    assert cli.main(["token", "--sub", "alice"]) == 2
    assert "at least 32" in capsys.readouterr().err


def test_token_signs_rs256_with_a_private_key_and_kid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = write(tmp_path / "private.pem", private_pem(rsa_key("a")))
    assert cli.main(["token", "--sub", "carol", "--private-key", str(key), "--kid", "key-a"]) == 0
    token = capsys.readouterr().out.strip()
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "kid": "key-a", "typ": "JWT"}
    assert decode(token, rsa_key("a").public_key(), "RS256")["sub"] == "carol"


@pytest.mark.parametrize(
    ("argv", "env", "problem"),
    [
        (["--kid", "a"], {"TASKPLATFORM_JWT_SECRET": SECRET}, "--kid names an RS256 key"),
        ([], {"TASKPLATFORM_JWT_ALGORITHM": "RS256"}, "--private-key PEM"),
        (["--private-key", "/nonexistent.pem"], {}, "cannot read the private key"),
    ],
)
def test_token_refuses_what_it_cannot_sign(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: dict[str, str],
    problem: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["token", "--sub", "alice", *argv]) == 2
    assert problem in capsys.readouterr().err


def test_token_role_choices_are_the_roles() -> None:
    assert cli.ROLE_NAMES == tuple(r.value for r in Role)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["token", "--sub", "a", "--role", "root"])


# ---------------------------------------------------------------- dev defaults
@pytest.mark.parametrize(
    ("argv", "env", "auth"),
    [
        (["dev"], {}, "disabled"),
        (["dev"], {"TASKPLATFORM_AUTH": "jwt"}, "jwt"),
        (["dev"], {"taskplatform_auth": "jwt"}, "jwt"),
        (["api"], {}, "jwt"),
        (["worker"], {}, "jwt"),
        (["status", "t1"], {}, "jwt"),
    ],
)
def test_dev_runs_without_authentication_unless_the_environment_asks(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str], auth: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli._settings(cli.build_parser().parse_args(argv)).auth == auth


# ---------------------------------------------------------------- the token the task commands send
@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    """The task commands' client talks to a fake API."""
    return api_for_cli(monkeypatch)


TASK = {
    "id": "t1",
    "task_type": "test_noop",
    "status": "CANCELLED",
    "created_at": "2024-05-01T10:00:00Z",
    "updated_at": "2024-05-01T10:00:00Z",
}


@pytest.mark.parametrize(
    ("argv", "env", "sent"),
    [
        (["status", "t1"], {"TASKPLATFORM_TOKEN": "env-token"}, "Bearer env-token"),
        (["status", "t1", "--token", "flag-token"], {"TASKPLATFORM_TOKEN": "env-token"}, "Bearer flag-token"),
        (["cancel", "t1"], {"TASKPLATFORM_TOKEN": "env-token"}, "Bearer env-token"),
        (["submit", "test_noop"], {"TASKPLATFORM_TOKEN": "env-token"}, "Bearer env-token"),
        (["status", "t1"], {}, None),
    ],
)
def test_task_commands_send_the_token_when_there_is_one(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str], sent: str | None
) -> None:
    from httpx import Response

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    api.on("GET", "/api/v1/tasks/t1", TASK)
    api.on(
        "POST", "/api/v1/tasks/t1/cancel", {"task_id": "t1", "status": "CANCELLED", "cancel_requested": True}
    )
    api.on("POST", "/api/v1/tasks", Response(201, json={"task_id": "t1", "status": "QUEUED"}))
    assert cli.main(argv) == 0
    assert api.only.headers.get("authorization") == sent


# ---------------------------------------------------------------- dev and api beyond loopback
@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The (host, auth) of each API the CLI would have started."""
    calls: list[tuple[str, str]] = []

    def fake_cmd_api(settings: Any, *, with_worker: bool = False) -> int:
        calls.append((settings.api_host, settings.auth))
        return 0

    monkeypatch.setattr(cli, "cmd_api", fake_cmd_api)
    return calls


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["dev", "--host", "0.0.0.0"], {}),
        (["dev", "--host", "::"], {}),
        (["dev", "--host", "192.168.1.20"], {}),
        (["dev", "--host", "myhost.example"], {}),
        (["dev"], {"TASKPLATFORM_API_HOST": "0.0.0.0"}),
        (["api", "--host", "0.0.0.0"], {"TASKPLATFORM_AUTH": "disabled"}),
        (["grpc", "--host", "0.0.0.0"], {"TASKPLATFORM_AUTH": "disabled"}),
        (["dev"], {"TASKPLATFORM_GRPC_HOST": "0.0.0.0"}),  # dev serves gRPC too
    ],
)
def test_serving_beyond_loopback_without_authentication_is_refused_with_exit_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    served: list[tuple[str, str]],
    argv: list[str],
    env: dict[str, str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(argv) == 2
    assert served == []
    err = capsys.readouterr().err
    assert "authentication disabled" in err and "--insecure-expose-without-auth" in err
    assert "TASKPLATFORM_AUTH=jwt" in err


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["dev"], {}),
        (["dev", "--host", "127.0.0.1"], {}),
        (["dev", "--host", "127.0.0.2"], {}),
        (["dev", "--host", "::1"], {}),
        (["dev", "--host", "localhost"], {}),
        (["dev", "--host", "0.0.0.0"], {"TASKPLATFORM_AUTH": "jwt", "TASKPLATFORM_JWT_SECRET": SECRET}),
        (["api", "--host", "0.0.0.0"], {}),
        (["dev", "--host", "0.0.0.0", "--insecure-expose-without-auth"], {}),
        (["dev"], {"TASKPLATFORM_GRPC_HOST": "0.0.0.0", "TASKPLATFORM_GRPC_ENABLED": "false"}),
    ],
)
def test_loopback_an_authenticated_api_or_the_explicit_override_serves(
    monkeypatch: pytest.MonkeyPatch, served: list[tuple[str, str]], argv: list[str], env: dict[str, str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(argv) == 0
    assert len(served) == 1


def test_the_override_warns_loudly(served: list[tuple[str, str]], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dev", "--host", "0.0.0.0", "--insecure-expose-without-auth"]) == 0
    assert served == [("0.0.0.0", "disabled")]
    assert "WARNING" in (err := capsys.readouterr().err) and "anyone who reaches it is an admin" in err
