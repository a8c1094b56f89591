"""TokenVerifier, parse_bearer and the role model: which tokens name a principal, and why others do not."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from taskplatform.auth import (
    AuthenticationError,
    AuthFailure,
    Principal,
    Role,
    TokenVerifier,
    parse_bearer,
)
from taskplatform.settings import PlatformSettings
from tests.api.tokens import (
    OTHER_SECRET,
    SECRET,
    claims,
    forged_hs256,
    hs256,
    public_jwk,
    public_pem,
    rs256,
    rsa_key,
    unsigned,
    write,
)


def settings(**overrides: Any) -> PlatformSettings:
    values: dict[str, Any] = {"auth": "jwt", "jwt_secret": SECRET}
    values.update(overrides)
    return PlatformSettings(**values)


@pytest.fixture
def verifier() -> TokenVerifier:
    return TokenVerifier.from_settings(settings())


def rejected(verifier: TokenVerifier, token: str) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as caught:
        verifier.verify(token)
    return caught.value


# ---------------------------------------------------------------- roles and principals
def test_roles_nest_admin_over_operator_over_submitter() -> None:
    assert Role.ADMIN.includes(Role.OPERATOR) and Role.ADMIN.includes(Role.SUBMITTER)
    assert Role.OPERATOR.includes(Role.SUBMITTER) and not Role.OPERATOR.includes(Role.ADMIN)
    assert not Role.SUBMITTER.includes(Role.OPERATOR)


def test_a_principal_sees_its_own_tasks_and_operators_see_everyones() -> None:
    alice = Principal("alice", frozenset({Role.SUBMITTER}))
    assert alice.may_see("alice") and not alice.may_see("bob") and not alice.may_see(None)
    assert not alice.can_see_all and not alice.is_admin
    operator = Principal("olga", frozenset({Role.OPERATOR}))
    assert operator.can_see_all and operator.may_see("bob") and not operator.is_admin
    nobody = Principal("x", frozenset())
    assert not nobody.has(Role.SUBMITTER) and nobody.describe_roles() == "none"


# ---------------------------------------------------------------- accepted tokens
def test_a_valid_token_names_its_subject_and_roles(verifier: TokenVerifier) -> None:
    principal = verifier.verify(hs256(claims("alice", ["operator", "submitter"])))
    assert principal == Principal("alice", frozenset({Role.OPERATOR, Role.SUBMITTER}))


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        ("operator submitter", {Role.OPERATOR, Role.SUBMITTER}),
        (["admin", "auditor", "root"], {Role.ADMIN}),  # roles of other systems are ignored
        (["viewer"], set()),
        (None, set()),
    ],
)
def test_roles_come_as_a_list_or_a_space_separated_string(
    verifier: TokenVerifier, roles: Any, expected: set[Role]
) -> None:
    assert verifier.verify(hs256(claims("alice", roles))).roles == expected


def test_a_roles_claim_of_another_type_is_rejected(verifier: TokenVerifier) -> None:
    assert rejected(verifier, hs256(claims("alice", {"admin": True}))).reason is AuthFailure.INVALID_CLAIM
    assert rejected(verifier, hs256(claims("alice", ["admin", 1]))).reason is AuthFailure.INVALID_CLAIM


def test_the_roles_claim_name_is_configurable() -> None:
    verifier = TokenVerifier.from_settings(settings(jwt_roles_claim="scope"))
    token = hs256(claims("alice", None, scope="admin openid"))
    assert verifier.verify(token).roles == {Role.ADMIN}
    assert verifier.verify(hs256(claims("alice", ["admin"]))).roles == set()  # "roles" means nothing now


def test_clock_skew_within_the_leeway_is_accepted(verifier: TokenVerifier) -> None:
    now = int(time.time())
    assert verifier.verify(hs256(claims(exp=now - 10))).subject == "alice"  # leeway 30 s
    assert verifier.verify(hs256(claims(nbf=now + 10, iat=now + 10))).subject == "alice"
    assert rejected(verifier, hs256(claims(exp=now - 60))).reason is AuthFailure.EXPIRED


def test_an_empty_issuer_or_audience_setting_is_not_checked() -> None:
    verifier = TokenVerifier.from_settings(settings(jwt_issuer="", jwt_audience=""))
    assert verifier.verify(hs256(claims(iss=None, aud=None))).subject == "alice"
    assert verifier.verify(hs256(claims(iss="elsewhere", aud="someone-else"))).subject == "alice"


def test_an_audience_list_that_holds_ours_is_accepted(verifier: TokenVerifier) -> None:
    assert verifier.verify(hs256(claims(aud=["billing", "taskplatform"]))).subject == "alice"


# ---------------------------------------------------------------- rejected tokens
NOW = int(time.time())


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (hs256(claims(), OTHER_SECRET), AuthFailure.BAD_SIGNATURE),
        (hs256(claims(exp=NOW - 3600)), AuthFailure.EXPIRED),
        (hs256(claims(nbf=NOW + 3600)), AuthFailure.NOT_YET_VALID),
        (hs256(claims(iat=NOW + 3600)), AuthFailure.NOT_YET_VALID),
        (hs256(claims(aud="billing")), AuthFailure.WRONG_AUDIENCE),
        (hs256(claims(iss="elsewhere")), AuthFailure.WRONG_ISSUER),
        (hs256(claims(sub=None)), AuthFailure.MISSING_CLAIM),
        (hs256(claims(exp=None)), AuthFailure.MISSING_CLAIM),
        (hs256(claims(iss=None)), AuthFailure.MISSING_CLAIM),
        (hs256(claims(aud=None)), AuthFailure.MISSING_CLAIM),
        (hs256(claims(sub=42)), AuthFailure.INVALID_CLAIM),
        (hs256(claims(sub="")), AuthFailure.INVALID_CLAIM),
        (hs256(claims(sub="x" * 256)), AuthFailure.INVALID_CLAIM),
        (hs256(claims(sub="a\x00b")), AuthFailure.INVALID_CLAIM),
        (hs256(claims(exp="tomorrow")), AuthFailure.MALFORMED_TOKEN),
        (unsigned(claims()), AuthFailure.ALGORITHM_NOT_ALLOWED),
        (forged_hs256(claims(), SECRET.encode(), alg="HS512"), AuthFailure.ALGORITHM_NOT_ALLOWED),
        ("not-a-jwt", AuthFailure.MALFORMED_TOKEN),
        ("e30.e30.e30", AuthFailure.ALGORITHM_NOT_ALLOWED),  # header {}: no alg
        ("!!.e30.e30", AuthFailure.MALFORMED_TOKEN),
    ],
    ids=lambda v: v.name if isinstance(v, AuthFailure) else None,
)
def test_tokens_that_fail_a_check_are_rejected_with_its_reason(
    verifier: TokenVerifier, token: str, reason: AuthFailure
) -> None:
    assert rejected(verifier, token).reason is reason


def test_an_empty_header_alg_is_not_allowed(verifier: TokenVerifier) -> None:
    token = forged_hs256(claims(), SECRET.encode(), alg="")
    assert rejected(verifier, token).reason is AuthFailure.ALGORITHM_NOT_ALLOWED


def test_a_tampered_payload_fails_the_signature(verifier: TokenVerifier) -> None:
    head, _, signature = hs256(claims("alice", ["submitter"])).split(".")
    _, payload, _ = hs256(claims("alice", ["admin"]), OTHER_SECRET).split(".")
    assert rejected(verifier, f"{head}.{payload}.{signature}").reason is AuthFailure.BAD_SIGNATURE


def test_an_rs256_token_is_refused_by_an_hs256_api(verifier: TokenVerifier) -> None:
    assert rejected(verifier, rs256(claims(), rsa_key())).reason is AuthFailure.ALGORITHM_NOT_ALLOWED


# ---------------------------------------------------------------- claim hygiene
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(header: bytes, payload: bytes) -> str:
    """Any bytes as header and claims, with a valid HS256 signature under SECRET."""
    head, body = _b64(header), _b64(payload)
    signature = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(signature)}"


@pytest.mark.parametrize(
    "overrides",
    [  # made when the test runs: a module-level "now" is long past by then in a full run
        lambda now: {"exp": str(now + 600)},
        lambda now: {"iat": str(now)},
        lambda now: {"nbf": str(now - 60)},
        lambda now: {"iat": True},
        lambda now: {"exp": [now + 600]},
    ],
    ids=["exp-string", "iat-string", "nbf-string", "iat-bool", "exp-list"],
)
def test_times_that_are_not_json_numbers_are_invalid_claims(
    verifier: TokenVerifier, overrides: Callable[[int], dict[str, Any]]
) -> None:
    error = rejected(verifier, hs256(claims(**overrides(int(time.time())))))
    assert error.reason in (AuthFailure.INVALID_CLAIM, AuthFailure.MALFORMED_TOKEN)
    assert "number of seconds" in error.detail or "well-formed" in error.detail


def test_a_numeric_string_exp_is_refused_though_pyjwt_accepts_it(verifier: TokenVerifier) -> None:
    error = rejected(verifier, hs256(claims(exp=str(int(time.time()) + 600))))
    assert error.reason is AuthFailure.INVALID_CLAIM and "exp must be a number" in error.detail


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": 1e308},
        {"exp": NOW + 86400 + 3600},  # a day and an hour ahead
        {"exp": NOW + 3600, "iat": NOW - 86400},  # 25 h between iat and exp
    ],
    ids=["exp-1e308", "exp-beyond-a-day", "exp-minus-iat-beyond-a-day"],
)
def test_a_token_living_longer_than_the_maximum_lifetime_is_refused(
    verifier: TokenVerifier, overrides: dict[str, Any]
) -> None:
    error = rejected(verifier, hs256(claims(**overrides)))
    assert error.reason is AuthFailure.INVALID_CLAIM and "lives longer" in error.detail


def test_the_maximum_lifetime_is_a_setting_and_a_day_by_default(verifier: TokenVerifier) -> None:
    assert PlatformSettings().jwt_max_lifetime_seconds == 86400
    assert verifier.verify(hs256(claims(iat=NOW, exp=NOW + 86400))).subject == "alice"
    hourly = TokenVerifier.from_settings(settings(jwt_max_lifetime_seconds=3600))
    assert hourly.verify(hs256(claims(exp=int(time.time()) + 3000))).subject == "alice"
    assert rejected(hourly, hs256(claims(iat=None, exp=int(time.time()) + 7200))).reason is (
        AuthFailure.INVALID_CLAIM
    )


@pytest.mark.parametrize(
    "subject",
    [
        "   ",
        "\t",
        "alice\nadmin",
        "alice\r\nINFO forged",
        "alice\x1b[31m",
        "alice\x7f",
        "admin\u202e",
        "ali\u200bce",
        " alice",
        "alice ",
        "alice\u2028x",
    ],
)
def test_a_subject_of_spaces_or_with_control_characters_is_refused(
    verifier: TokenVerifier, subject: str
) -> None:
    error = rejected(verifier, hs256(claims(sub=subject)))
    assert error.reason is AuthFailure.INVALID_CLAIM and "printable characters" in error.detail


@pytest.mark.parametrize("subject", ["alice", "Ålice Smith", "user@example.com", "李雷", "a" * 255])
def test_ordinary_subjects_are_accepted(verifier: TokenVerifier, subject: str) -> None:
    assert verifier.verify(hs256(claims(sub=subject))).subject == subject


@pytest.mark.parametrize(
    "token",
    [
        f"{_b64(bytes([0xB7, 0xFF]) * 4)}.e30.e30",  # header not UTF-8
        f"{_b64(b'{not json')}.e30.e30",  # header not JSON
        signed(b'{"alg":"HS256","typ":"JWT"}', bytes([0xB7, 0xFF]) * 4),  # claims not UTF-8
        signed(b'{"alg":"HS256","typ":"JWT"}', b"[1, 2]"),  # claims not an object
        signed(b'{"alg":"HS256","typ":"JWT","kid":7}', b"{}"),  # kid not a string
    ],
    ids=["header-bytes", "header-json", "claims-bytes", "claims-array", "kid-number"],
)
def test_a_malformed_token_gets_a_fixed_reason_and_the_details_only_go_to_the_debug_log(
    verifier: TokenVerifier, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="taskplatform.auth"):
        error = rejected(verifier, token)
    assert error.reason is AuthFailure.MALFORMED_TOKEN
    assert "well-formed JWT" in error.detail
    for internal in ("codec", "0xb7", "Invalid", "decode", "Expecting"):
        assert internal not in str(error)
    assert any(r.levelno == logging.DEBUG and "rejected" in r.getMessage() for r in caplog.records)


def test_other_rejections_carry_fixed_texts_not_the_librarys(verifier: TokenVerifier) -> None:
    assert (
        rejected(verifier, hs256(claims(aud="billing"))).detail == "the token is not meant for this API (aud)"
    )
    missing = rejected(verifier, hs256(claims(exp=None)))
    assert missing.detail == "the token lacks the required claim 'exp'"
    assert rejected(verifier, hs256(claims(iat="soon"))).detail == "iat must be a number of seconds"


# ---------------------------------------------------------------- RS256 keys
def test_rs256_with_a_pem_public_key(tmp_path: Path) -> None:
    pem = write(tmp_path / "public.pem", public_pem(rsa_key("a")))
    verifier = TokenVerifier.from_settings(settings(jwt_algorithm="RS256", jwt_public_key_file=pem))
    assert verifier.verify(rs256(claims("alice"), rsa_key("a"))).subject == "alice"
    assert verifier.verify(rs256(claims("alice"), rsa_key("a"), kid="anything")).subject == "alice"
    assert rejected(verifier, rs256(claims(), rsa_key("b"))).reason is AuthFailure.BAD_SIGNATURE
    # HS/RS confusion: the public key (known to everyone) used as an HMAC secret.
    forged = forged_hs256(claims("alice", ["admin"]), public_pem(rsa_key("a")))
    assert rejected(verifier, forged).reason is AuthFailure.ALGORITHM_NOT_ALLOWED
    assert rejected(verifier, hs256(claims())).reason is AuthFailure.ALGORITHM_NOT_ALLOWED


def test_rs256_with_a_jwks_chooses_the_key_by_kid(tmp_path: Path) -> None:
    jwks = {"keys": [public_jwk(rsa_key("a"), "key-a"), public_jwk(rsa_key("b"), "key-b")]}
    path = write(tmp_path / "jwks.json", jwks)
    verifier = TokenVerifier.from_settings(settings(jwt_algorithm="RS256", jwt_jwks_file=path))
    assert verifier.verify(rs256(claims("alice"), rsa_key("a"), kid="key-a")).subject == "alice"
    assert verifier.verify(rs256(claims("bob"), rsa_key("b"), kid="key-b")).subject == "bob"
    unknown = rejected(verifier, rs256(claims(), rsa_key("a"), kid="key-c"))
    assert unknown.reason is AuthFailure.UNKNOWN_KID
    no_kid = rejected(verifier, rs256(claims(), rsa_key("a")))
    assert no_kid.reason is AuthFailure.UNKNOWN_KID and "holds 2" in no_kid.detail
    wrong_key = rejected(verifier, rs256(claims(), rsa_key("a"), kid="key-b"))
    assert wrong_key.reason is AuthFailure.BAD_SIGNATURE


def test_a_jwks_of_one_key_serves_tokens_without_kid_and_skips_other_keys(tmp_path: Path) -> None:
    jwks = {
        "keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},  # not an RS256 key: skipped
            public_jwk(rsa_key("b"), "enc", use="enc"),  # for encryption: skipped
            public_jwk(rsa_key("a"), "key-a"),
        ]
    }
    path = write(tmp_path / "jwks.json", jwks)
    verifier = TokenVerifier.from_settings(settings(jwt_algorithm="RS256", jwt_jwks_file=path))
    assert verifier.verify(rs256(claims("alice"), rsa_key("a"))).subject == "alice"
    assert rejected(verifier, rs256(claims(), rsa_key("b"), kid="enc")).reason is AuthFailure.UNKNOWN_KID
    forged = forged_hs256(claims(), b"secret")  # the skipped oct key's bytes
    assert rejected(verifier, forged).reason is AuthFailure.ALGORITHM_NOT_ALLOWED


# ---------------------------------------------------------------- the Authorization header
@pytest.mark.parametrize("header", ["Bearer abc.def.ghi", "bearer abc.def.ghi", "BEARER  abc.def.ghi "])
def test_parse_bearer_takes_the_token_of_a_bearer_header(header: str) -> None:
    assert parse_bearer(header) == "abc.def.ghi"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, AuthFailure.MISSING_TOKEN),
        ("", AuthFailure.MISSING_TOKEN),
        ("   ", AuthFailure.MISSING_TOKEN),
        ("Basic YWxpY2U6cHc=", AuthFailure.MALFORMED_HEADER),
        ("Bearer", AuthFailure.MALFORMED_HEADER),
        ("Bearer a.b.c extra", AuthFailure.MALFORMED_HEADER),
        ('Bearer a"b', AuthFailure.MALFORMED_HEADER),
        ("Bearer " + "a" * 9000, AuthFailure.MALFORMED_HEADER),
        ("abc.def.ghi", AuthFailure.MALFORMED_HEADER),
    ],
)
def test_parse_bearer_says_what_is_wrong_with_the_header(header: str | None, reason: AuthFailure) -> None:
    with pytest.raises(AuthenticationError) as caught:
        parse_bearer(header)
    assert caught.value.reason is reason
