"""Authentication, roles and task ownership, against the real app and a real broker."""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskplatform.api.app import create_app
from taskplatform.cli import main
from taskplatform.errors import ConfigError
from taskplatform.models import TaskStatus
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.tasks.registry import ExecutableRegistry
from tests.api.tokens import (
    OTHER_SECRET,
    SECRET,
    bearer,
    claims,
    forged_hs256,
    hs256,
    private_pem,
    public_jwk,
    public_pem,
    rs256,
    rsa_key,
    token,
    unsigned,
    write,
)
from tests.support.api import client_of, served

pytestmark = pytest.mark.integration

ALICE = bearer(token("alice"))
BOB = bearer(token("bob"))
OLGA = bearer(token("olga", "operator"))
ADA = bearer(token("ada", "admin"))
NOOP = {"task_type": "test_noop", "parameters": {}}

Serve = Callable[..., contextlib.AbstractAsyncContextManager[tuple[httpx.AsyncClient, Runtime]]]


@pytest.fixture
def serve(
    make_settings: Callable[..., PlatformSettings], registry: ExecutableRegistry, rabbitmq: Any
) -> Serve:
    """``async with serve(**settings) as (client, runtime)``: the API with JWT authentication
    (HS256 with SECRET unless told otherwise) and no worker."""

    @contextlib.asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
        values: dict[str, Any] = {"auth": "jwt", "jwt_secret": SECRET}
        values.update(overrides)
        runtime = Runtime(make_settings(**values), role="api", registry=registry, relay=False)
        async with served(runtime) as app, client_of(app) as client:
            yield client, runtime

    return run


@pytest.fixture
async def api(serve: Serve) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    async with serve() as running:
        yield running


async def submit(client: httpx.AsyncClient, who: dict[str, str], **body: Any) -> str:
    r = await client.post("/api/v1/tasks", json={**NOOP, **body}, headers=who)
    assert r.status_code == 201, r.text
    return str(r.json()["task_id"])


async def owner_of(runtime: Runtime, task_id: str) -> str | None:
    task = await runtime.store.get(task_id)
    assert task is not None, task_id
    return task.user_id


async def stored(runtime: Runtime) -> int:
    return sum((await runtime.store.count_by_status()).values())


# ---------------------------------------------------------------- 401
NOW = int(time.time())
#: (what is wrong, Authorization header or None, reason in the challenge or None for no error code)
REJECTED = [
    ("no token", None, None),
    ("another scheme", "Basic YWxpY2U6cHc=", "malformed authorization header"),
    ("empty bearer", "Bearer ", "malformed authorization header"),
    ("not a JWT", "Bearer not-a-jwt", "malformed token"),
    ("bad signature", f"Bearer {hs256(claims(), OTHER_SECRET)}", "bad signature"),
    ("expired", f"Bearer {hs256(claims(exp=NOW - 120))}", "token expired"),
    ("not yet valid", f"Bearer {hs256(claims(nbf=NOW + 600))}", "token not yet valid"),
    ("wrong audience", f"Bearer {hs256(claims(aud='billing'))}", "wrong audience"),
    ("wrong issuer", f"Bearer {hs256(claims(iss='elsewhere'))}", "wrong issuer"),
    ("alg none", f"Bearer {unsigned(claims(roles=['admin']))}", "algorithm not allowed"),
    ("alg HS512", f"Bearer {forged_hs256(claims(), SECRET.encode(), 'HS512')}", "algorithm not allowed"),
    ("RS256 to an HS256 API", f"Bearer {rs256(claims(), rsa_key())}", "algorithm not allowed"),
    ("missing sub", f"Bearer {hs256(claims(sub=None))}", "missing claim"),
    ("missing exp", f"Bearer {hs256(claims(exp=None))}", "missing claim"),
]


def assert_unauthorized(r: httpx.Response, reason: str | None, what: str) -> None:
    assert r.status_code == 401, (what, r.status_code, r.text)
    error = r.json()["error"]
    assert error["code"] == "unauthorized" and set(r.json()) == {"error"}, (what, r.text)
    challenge = r.headers["www-authenticate"]
    if reason is None:
        assert challenge == 'Bearer realm="taskplatform"', what
        assert "Authorization: Bearer" in error["message"]
    else:
        code = "invalid_request" if reason == "malformed authorization header" else "invalid_token"
        assert challenge == (f'Bearer realm="taskplatform", error="{code}", error_description="{reason}"'), (
            what
        )
        assert reason in error["message"], (what, error["message"])


async def test_requests_without_a_valid_token_get_401_with_a_bearer_challenge_and_change_nothing(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    task_id = await submit(client, ALICE)
    for what, header, reason in REJECTED:
        headers = {"Authorization": header} if header is not None else {}
        for method, path, body in [
            ("GET", "/api/v1/tasks", None),
            ("POST", "/api/v1/tasks", NOOP),
            ("GET", f"/api/v1/tasks/{task_id}", None),
            ("POST", f"/api/v1/tasks/{task_id}/cancel", None),
            ("GET", "/api/v1/task-types", None),
            ("GET", "/api/v1/dead-letters", None),
            ("POST", "/api/v1/dead-letters/replay", {"dry_run": True, "task_type": "test_noop"}),
        ]:
            r = await client.request(method, path, json=body, headers=headers)
            assert_unauthorized(r, reason, f"{what}: {method} {path}")
    assert await stored(runtime) == 1  # no submission got through
    task = await runtime.store.get(task_id)
    assert task is not None and task.status is TaskStatus.QUEUED  # no cancel got through
    audit = (await runtime.store.list_audit()).items
    assert [(e.action, e.task_ids) for e in audit] == [
        ("submit", [task_id])
    ]  # no dry run, no submission got through


#: (what is wrong, token, the text the 401 message must hold)
UNHYGIENIC = [
    ("exp a numeric string", hs256(claims(exp=str(NOW + 600))), "exp must be a number"),
    ("exp 1e308", hs256(claims(exp=1e308)), "lives longer"),
    ("exp a year ahead", hs256(claims(exp=NOW + 365 * 86400)), "lives longer"),
    ("sub of spaces", hs256(claims(sub="   ")), "printable characters"),
    ("sub with a newline", hs256(claims(sub="alice\nadmin")), "printable characters"),
    ("header not UTF-8", "t7e3t7e3.e30.e30", "well-formed JWT"),
]


async def test_tokens_with_unfit_claims_get_401_with_a_fixed_clear_reason(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    for what, bad, text in UNHYGIENIC:
        r = await client.post("/api/v1/tasks", json=NOOP, headers=bearer(bad))
        reason = "malformed token" if text == "well-formed JWT" else "invalid claim"
        assert_unauthorized(r, reason, what)
        message = r.json()["error"]["message"]
        assert text in message, (what, message)
        assert "codec" not in message and "0xb7" not in message and "\n" not in message, (what, message)
    assert await stored(runtime) == 0


async def test_health_docs_and_the_openapi_document_stay_public(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = api
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200
    assert (await client.get("/docs")).status_code == 200
    assert (await client.get("/swagger/index.html")).status_code == 307
    spec = (await client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        **spec["components"]["securitySchemes"]["HTTPBearer"],
        "type": "http",
        "scheme": "bearer",
    }
    for path, method in [
        ("/api/v1/tasks", "post"),
        ("/api/v1/tasks/{task_id}/cancel", "post"),
        ("/api/v1/task-types", "get"),
        ("/api/v1/dead-letters", "get"),
    ]:
        operation = spec["paths"][path][method]
        assert operation["security"] == [{"HTTPBearer": []}], path
        for code in ("401", "403"):
            schema = operation["responses"][code]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, code)
    assert "security" not in spec["paths"]["/healthz"]["get"]
    assert "401" not in spec["paths"]["/readyz"]["get"]["responses"]


# ---------------------------------------------------------------- 403 for roles
async def test_a_token_without_a_known_role_is_forbidden_everywhere(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    viewer = bearer(token("vera", "viewer"))
    for method, path in [
        ("GET", "/api/v1/tasks"),
        ("POST", "/api/v1/tasks"),
        ("GET", "/api/v1/task-types"),
        ("GET", "/api/v1/dead-letters"),
    ]:
        r = await client.request(method, path, json=NOOP if method == "POST" else None, headers=viewer)
        assert r.status_code == 403, (path, r.text)
        error = r.json()["error"]
        assert error["code"] == "forbidden" and "the token's roles: none" in error["message"], path
    assert await stored(runtime) == 0


async def test_a_submitter_is_forbidden_the_dead_letter_api(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, runtime = api
    for method, path in [
        ("GET", "/api/v1/dead-letters"),
        ("GET", "/api/v1/dead-letters/audit"),
        ("GET", "/api/v1/dead-letters/some-id"),
        ("POST", "/api/v1/dead-letters/some-id/replay"),
        ("DELETE", "/api/v1/dead-letters/some-id"),
        ("POST", "/api/v1/dead-letters/replay"),
    ]:
        body = {"dry_run": True, "task_type": "x"} if path.endswith("/dead-letters/replay") else None
        r = await client.request(method, path, json=body, headers=ALICE)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["error"]["message"] == (
            "this needs the operator or admin role; the token's roles: submitter"
        )
    assert (await runtime.store.list_audit()).items == []


async def test_operators_and_admins_use_the_dead_letter_api_as_themselves(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    for who, name in [(OLGA, "olga"), (ADA, "ada")]:
        r = await client.get("/api/v1/dead-letters", headers=who)
        assert r.status_code == 200 and r.json()["counts"]["total"] == 0, r.text
        r = await client.post(
            "/api/v1/dead-letters/replay",
            json={"task_type": "test_noop", "dry_run": True},
            headers={**who, "X-Operator": "mallory"},  # ignored: the token says who acts
        )
        assert r.status_code == 200, r.text
        audit = (await client.get("/api/v1/dead-letters/audit", headers=who)).json()["items"]
        assert audit[0]["actor"] == name and audit[0]["action"] == "bulk_replay"
    assert [e.actor for e in (await runtime.store.list_audit()).items] == ["ada", "olga"]


# ---------------------------------------------------------------- ownership
async def test_another_users_task_answers_exactly_like_a_missing_one_and_is_not_cancelled(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    task_id = await submit(client, ALICE)
    missing = str(uuid.uuid4())  # same length as a task id, so even Content-Length matches
    assert len(missing) == len(task_id)
    for method, suffix in [("GET", ""), ("POST", "/cancel"), ("GET", "/children")]:
        theirs = await client.request(method, f"/api/v1/tasks/{task_id}{suffix}", headers=BOB)
        absent = await client.request(method, f"/api/v1/tasks/{missing}{suffix}", headers=BOB)
        assert theirs.status_code == absent.status_code == 404, (suffix, theirs.text)
        assert theirs.json() == json.loads(absent.text.replace(missing, task_id)), suffix
        assert theirs.json()["error"] == {"code": "not_found", "message": f"task {task_id!r} not found"}
        assert dict(theirs.headers) == dict(absent.headers), suffix
    task = await runtime.store.get(task_id)
    assert task is not None and task.status is TaskStatus.QUEUED and not task.cancel_requested

    # The owner (and so the checks above) does see it.
    assert (await client.get(f"/api/v1/tasks/{task_id}", headers=ALICE)).json()["user_id"] == "alice"
    assert (await client.get(f"/api/v1/tasks/{task_id}/children", headers=ALICE)).json()["items"] == []
    r = await client.post(f"/api/v1/tasks/{task_id}/cancel", headers=ALICE)
    assert r.status_code == 200 and r.json()["status"] == "CANCELLED"


async def test_a_submitter_lists_only_its_own_tasks(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, _ = api
    mine = {await submit(client, ALICE, tags=["x"]) for _ in range(2)}
    theirs = await submit(client, BOB, tags=["x"])

    r = await client.get("/api/v1/tasks", headers=ALICE)
    assert {t["id"] for t in r.json()["items"]} == mine
    r = await client.get("/api/v1/tasks", params={"user_id": "alice", "tag": "x"}, headers=ALICE)
    assert {t["id"] for t in r.json()["items"]} == mine
    r = await client.get("/api/v1/tasks", params={"user_id": "bob"}, headers=ALICE)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert "own tasks only" in r.json()["error"]["message"]

    r = await client.get("/api/v1/tasks", headers=OLGA)  # operators see everyone's
    assert {t["id"] for t in r.json()["items"]} == mine | {theirs}
    r = await client.get("/api/v1/tasks", params={"user_id": "bob"}, headers=ADA)
    assert [t["id"] for t in r.json()["items"]] == [theirs]


async def test_operators_and_admins_see_and_cancel_every_task(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, _ = api
    first, second = await submit(client, BOB), await submit(client, BOB)
    for who, task_id in [(OLGA, first), (ADA, second)]:
        r = await client.get(f"/api/v1/tasks/{task_id}", headers=who)
        assert r.status_code == 200 and r.json()["user_id"] == "bob"
        assert (await client.get(f"/api/v1/tasks/{task_id}/children", headers=who)).status_code == 200
        r = await client.post(f"/api/v1/tasks/{task_id}/cancel", headers=who)
        assert r.status_code == 200 and r.json()["status"] == "CANCELLED"


async def test_a_task_belongs_to_the_tokens_subject_and_only_an_admin_submits_for_others(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    own = await submit(client, ALICE)
    same = await submit(client, ALICE, user_id="alice")
    for who in (ALICE, OLGA):
        r = await client.post("/api/v1/tasks", json={**NOOP, "user_id": "bob"}, headers=who)
        assert r.status_code == 403 and "only an admin" in r.json()["error"]["message"], r.text
    assert await stored(runtime) == 2
    on_behalf = await submit(client, ADA, user_id="bob")
    by_admin = await submit(client, ADA)
    owners = {i: await owner_of(runtime, i) for i in (own, same, on_behalf, by_admin)}
    assert owners == {own: "alice", same: "alice", on_behalf: "bob", by_admin: "ada"}
    assert (await client.get(f"/api/v1/tasks/{on_behalf}", headers=BOB)).status_code == 200


async def test_idempotency_keys_are_per_authenticated_user(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, runtime = api
    key = {"Idempotency-Key": "order-42"}
    first = await client.post("/api/v1/tasks", json=NOOP, headers={**ALICE, **key})
    again = await client.post("/api/v1/tasks", json=NOOP, headers={**ALICE, **key})
    other = await client.post("/api/v1/tasks", json=NOOP, headers={**BOB, **key})
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 201)
    assert first.json()["task_id"] == again.json()["task_id"] != other.json()["task_id"]
    assert await stored(runtime) == 2


# ---------------------------------------------------------------- RS256
async def test_rs256_with_a_pem_public_key(serve: Serve, tmp_path: Path) -> None:
    pem = write(tmp_path / "public.pem", public_pem(rsa_key("a")))
    async with serve(jwt_algorithm="RS256", jwt_public_key_file=pem, jwt_secret=None) as (client, _):
        good = rs256(claims("alice"), rsa_key("a"))
        assert (await client.get("/api/v1/tasks", headers=bearer(good))).status_code == 200
        other_key = rs256(claims("alice"), rsa_key("b"))
        assert_unauthorized(
            await client.get("/api/v1/tasks", headers=bearer(other_key)), "bad signature", "b"
        )
        # The public key is public: an HS256 token "signed" with it must not pass.
        forged = forged_hs256(claims("alice", ["admin"]), public_pem(rsa_key("a")))
        r = await client.get("/api/v1/dead-letters", headers=bearer(forged))
        assert_unauthorized(r, "algorithm not allowed", "HS256 with the public key")


async def test_rs256_with_a_jwks_file_chooses_the_key_by_kid(serve: Serve, tmp_path: Path) -> None:
    jwks = write(
        tmp_path / "jwks.json", {"keys": [public_jwk(rsa_key("a"), "a"), public_jwk(rsa_key("b"), "b")]}
    )
    async with serve(jwt_algorithm="RS256", jwt_jwks_file=jwks) as (client, _):
        for kid in ("a", "b"):
            r = await client.get("/api/v1/tasks", headers=bearer(rs256(claims("alice"), rsa_key(kid), kid)))
            assert r.status_code == 200, (kid, r.text)
        for what, value in [
            ("unknown kid", rs256(claims(), rsa_key("a"), "c")),
            ("no kid, two keys", rs256(claims(), rsa_key("a"))),
        ]:
            r = await client.get("/api/v1/tasks", headers=bearer(value))
            assert_unauthorized(r, "unknown kid", what)
        r = await client.get("/api/v1/tasks", headers=bearer(rs256(claims(), rsa_key("a"), "b")))
        assert_unauthorized(r, "bad signature", "kid b, signed with a")


# ---------------------------------------------------------------- tokens from the CLI
@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``main`` reads the environment and configures the root logger: keep both to the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    for name in ("ALGORITHM", "ISSUER", "AUDIENCE", "ROLES_CLAIM"):
        monkeypatch.delenv(f"TASKPLATFORM_JWT_{name}", raising=False)
    monkeypatch.setenv("TASKPLATFORM_JWT_SECRET", SECRET)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


async def test_a_token_minted_by_the_cli_is_accepted(
    api: tuple[httpx.AsyncClient, Runtime], cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    client, runtime = api
    assert main(["token", "--sub", "dave", "--role", "operator", "--ttl", "60"]) == 0
    minted = bearer(capsys.readouterr().out.strip())
    task_id = await submit(client, minted)
    assert await owner_of(runtime, task_id) == "dave"
    assert (await client.get("/api/v1/dead-letters", headers=minted)).status_code == 200

    assert main(["token", "--sub", "erin"]) == 0  # default role: submitter
    submitter = bearer(capsys.readouterr().out.strip())
    assert (await client.get(f"/api/v1/tasks/{task_id}", headers=submitter)).status_code == 404
    assert (await client.get("/api/v1/dead-letters", headers=submitter)).status_code == 403


async def test_an_rs256_token_minted_by_the_cli_is_accepted(
    serve: Serve, cli_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = write(tmp_path / "private.pem", private_pem(rsa_key("b")))
    jwks = write(
        tmp_path / "jwks.json", {"keys": [public_jwk(rsa_key("a"), "a"), public_jwk(rsa_key("b"), "b")]}
    )
    assert main(["token", "--sub", "fay", "--private-key", str(key), "--kid", "b"]) == 0
    minted = bearer(capsys.readouterr().out.strip())
    async with serve(jwt_algorithm="RS256", jwt_jwks_file=jwks) as (client, runtime):
        task_id = await submit(client, minted)
        assert await owner_of(runtime, task_id) == "fay"


# ---------------------------------------------------------------- configuration
def test_create_app_refuses_jwt_without_key_material(make_settings: Callable[..., PlatformSettings]) -> None:
    with pytest.raises(ConfigError) as caught:
        create_app(make_settings(auth="jwt"))
    assert "TASKPLATFORM_JWT_SECRET" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        create_app(make_settings(auth="jwt", jwt_algorithm="RS256"))
    assert "TASKPLATFORM_JWT_PUBLIC_KEY_FILE" in str(caught.value)
    assert "TASKPLATFORM_JWT_JWKS_FILE" in str(caught.value)
    create_app(make_settings(auth="jwt", jwt_secret=SECRET))  # what the messages ask for is enough


async def test_auth_disabled_warns_once_and_every_request_acts_as_an_admin(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="taskplatform.api.app"):
        async with serve(auth="disabled", jwt_secret=None) as (client, runtime):
            warnings = [r for r in caplog.records if "authentication is disabled" in r.getMessage()]
            assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
            task_id = await submit(client, {}, user_id="bob")
            assert (await client.get(f"/api/v1/tasks/{task_id}")).json()["user_id"] == "bob"
            unowned = await submit(client, {})
            assert await owner_of(runtime, unowned) is None
            assert (await client.get("/api/v1/dead-letters")).status_code == 200
            for headers, actor in [({"X-Operator": "alice"}, "alice"), ({}, "anonymous")]:
                r = await client.post(
                    "/api/v1/dead-letters/replay", json={"task_type": "x", "dry_run": True}, headers=headers
                )
                assert r.status_code == 200, r.text
                assert (await runtime.store.list_audit()).items[0].actor == actor
            spec = (await client.get("/openapi.json")).json()
            assert "securitySchemes" not in spec.get("components", {})
            assert "security" not in spec["paths"]["/api/v1/tasks"]["post"]


async def test_jwt_mode_does_not_warn(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="taskplatform.api.app"):
        async with serve():
            pass
    assert not [r for r in caplog.records if "authentication is disabled" in r.getMessage()]
