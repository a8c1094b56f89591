"""The authentication configuration check (ConfigError naming what to set) and mint_token."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from taskplatform.auth import Principal, Role, TokenVerifier, mint_token
from taskplatform.errors import ConfigError
from taskplatform.settings import PlatformSettings
from tests.api.tokens import SECRET, private_pem, public_jwk, public_pem, rsa_key, write


def settings(**overrides: Any) -> PlatformSettings:
    values: dict[str, Any] = {"auth": "jwt"}
    values.update(overrides)
    return PlatformSettings(**values)


def refused(**overrides: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        TokenVerifier.from_settings(settings(**overrides))
    return str(caught.value)


# ---------------------------------------------------------------- HS256
def test_hs256_without_a_secret_names_the_variables_to_set() -> None:
    message = refused()
    assert "TASKPLATFORM_JWT_SECRET" in message and "at least 32 bytes" in message
    assert "TASKPLATFORM_JWT_PUBLIC_KEY_FILE" in message and "TASKPLATFORM_AUTH=disabled" in message


def test_hs256_with_a_short_secret_says_how_long_it_is_and_must_be() -> None:
    message = refused(jwt_secret="x" * 31)
    assert "TASKPLATFORM_JWT_SECRET is 31 bytes" in message and "at least 32" in message
    TokenVerifier.from_settings(settings(jwt_secret="abcdefgh" * 4))  # exactly enough


def test_the_secret_length_counts_bytes_not_characters() -> None:
    TokenVerifier.from_settings(settings(jwt_secret="éèêëàâäô" * 2))  # 16 characters, 32 bytes
    assert "is 30 bytes" in refused(jwt_secret="é" * 15)


@pytest.mark.parametrize("secret", ["a" * 32, "ab" * 24, "0123456" * 6, "é" * 40])
def test_a_long_secret_of_too_few_distinct_bytes_is_refused(secret: str) -> None:
    message = refused(jwt_secret=secret)
    assert "TASKPLATFORM_JWT_SECRET" in message and "distinct bytes" in message
    assert secret not in message
    with pytest.raises(ConfigError, match="TASKPLATFORM_JWT_SECRET"):
        mint_token(settings(jwt_secret=secret), "alice")


def test_a_secret_of_eight_distinct_bytes_is_enough() -> None:
    TokenVerifier.from_settings(settings(jwt_secret="01234567" * 4))


def test_mint_token_refuses_a_lifetime_the_verifier_would_refuse() -> None:
    config = settings(jwt_secret=SECRET, jwt_max_lifetime_seconds=3600)
    with pytest.raises(ConfigError, match="TASKPLATFORM_JWT_MAX_LIFETIME_SECONDS=3600"):
        mint_token(config, "alice", ttl_seconds=3601)
    assert TokenVerifier.from_settings(config).verify(mint_token(config, "alice", ttl_seconds=3600))


# ---------------------------------------------------------------- RS256
def test_rs256_needs_exactly_one_key_source(tmp_path: Path) -> None:
    neither = refused(jwt_algorithm="RS256")
    assert "TASKPLATFORM_JWT_PUBLIC_KEY_FILE" in neither and "TASKPLATFORM_JWT_JWKS_FILE" in neither
    assert "neither is set" in neither
    pem = write(tmp_path / "k.pem", public_pem(rsa_key()))
    jwks = write(tmp_path / "k.json", {"keys": [public_jwk(rsa_key(), "a")]})
    both = refused(jwt_algorithm="RS256", jwt_public_key_file=pem, jwt_jwks_file=jwks)
    assert "both are set" in both


def test_an_unreadable_key_file_names_its_variable_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    message = refused(jwt_algorithm="RS256", jwt_public_key_file=missing)
    assert f"TASKPLATFORM_JWT_PUBLIC_KEY_FILE={missing}" in message and "cannot read" in message
    message = refused(jwt_algorithm="RS256", jwt_jwks_file=tmp_path)  # a directory
    assert f"TASKPLATFORM_JWT_JWKS_FILE={tmp_path}" in message and "cannot read" in message


def test_a_pem_file_must_hold_an_rsa_public_key_of_2048_bits(tmp_path: Path) -> None:
    garbage = write(tmp_path / "garbage.pem", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    assert "is not a PEM public key" in refused(jwt_algorithm="RS256", jwt_public_key_file=garbage)
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    ec_pem = write(
        tmp_path / "ec.pem",
        ec_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    )
    assert "RS256 needs an RSA key" in refused(jwt_algorithm="RS256", jwt_public_key_file=ec_pem)
    small = write(tmp_path / "small.pem", public_pem(rsa_key("small", 1024)))
    assert "1024-bit RSA key" in refused(jwt_algorithm="RS256", jwt_public_key_file=small)


def test_a_pem_certificate_is_accepted_for_its_public_key(tmp_path: Path) -> None:
    key = rsa_key("a")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path = write(tmp_path / "cert.pem", cert.public_bytes(serialization.Encoding.PEM))
    verifier = TokenVerifier.from_settings(settings(jwt_algorithm="RS256", jwt_public_key_file=path))
    token = jwt.encode(
        {"sub": "alice", "exp": int(time.time()) + 600, "iss": "taskplatform", "aud": "taskplatform"},
        key,
        "RS256",
    )
    assert verifier.verify(token).subject == "alice"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "is not JSON"),
        ([1, 2], "is not a JWKS"),
        ({"keys": []}, "holds no RSA key for RS256"),
        ({"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}]}, "holds no RSA key for RS256"),
        ({"keys": [{"kty": "RSA", "kid": "a", "n": "!!", "e": "AQAB"}]}, "is not a valid RSA JWK"),
        ({"keys": [{"kty": "RSA", "kid": 7, "n": "AQAB", "e": "AQAB"}]}, "kid that is not a string"),
        ({"keys": ["private"]}, "holds private key material"),
        ({"keys": ["a", "a"]}, "each needs its own kid"),
        ({"keys": ["a", None]}, "each needs its own kid"),
        ({"keys": ["small"]}, "1024-bit RSA key"),
    ],
)
def test_a_jwks_file_that_cannot_serve_is_refused_with_the_reason(
    tmp_path: Path, content: Any, problem: str
) -> None:
    if isinstance(content, dict):
        content = {"keys": [_jwk(k) for k in content["keys"]]}
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    path = write(tmp_path / "jwks.json", data)
    message = refused(jwt_algorithm="RS256", jwt_jwks_file=path)
    assert message.startswith(f"TASKPLATFORM_JWT_JWKS_FILE={path}") and problem in message


def _jwk(spec: Any) -> Any:
    """Test shorthand: "a"/None -> a public key with that kid; "private", "small" -> such a key."""
    if isinstance(spec, dict):
        return spec
    if spec == "private":
        from jwt.algorithms import RSAAlgorithm

        return {**RSAAlgorithm.to_jwk(rsa_key("a"), as_dict=True), "kid": "p"}
    if spec == "small":
        return public_jwk(rsa_key("small", 1024), "s")
    return public_jwk(rsa_key("a"), spec)


def test_auth_disabled_needs_no_keys() -> None:
    from taskplatform.api.auth import Authenticator

    authenticator = Authenticator.from_settings(settings(auth="disabled"))
    assert not authenticator.enabled
    assert authenticator.authenticate(None) == Principal(None, frozenset({Role.ADMIN}))


# ---------------------------------------------------------------- minting
def test_mint_token_hs256_carries_the_claims_the_verifier_needs() -> None:
    config = settings(jwt_secret=SECRET)
    token = mint_token(config, "alice", roles=[Role.OPERATOR, Role.SUBMITTER], ttl_seconds=600, now=1_000)
    claims = jwt.decode(
        token, SECRET, algorithms=["HS256"], options={"verify_exp": False}, audience="taskplatform"
    )
    assert claims == {
        "sub": "alice",
        "roles": ["operator", "submitter"],
        "iss": "taskplatform",
        "aud": "taskplatform",
        "iat": 1_000,
        "exp": 1_600,
    }
    fresh = mint_token(config, "alice", roles=[Role.ADMIN])
    assert TokenVerifier.from_settings(config).verify(fresh) == Principal("alice", frozenset({Role.ADMIN}))


def test_mint_token_leaves_out_unchecked_issuer_and_audience_and_uses_the_roles_claim() -> None:
    config = settings(jwt_secret=SECRET, jwt_issuer="", jwt_audience="", jwt_roles_claim="groups")
    claims = jwt.decode(mint_token(config, "bob"), SECRET, algorithms=["HS256"])
    assert "iss" not in claims and "aud" not in claims and claims["groups"] == ["submitter"]


def test_mint_token_rs256_with_a_kid_verifies_against_the_jwks(tmp_path: Path) -> None:
    key_file = write(tmp_path / "private.pem", private_pem(rsa_key("b")))
    jwks = write(
        tmp_path / "jwks.json", {"keys": [public_jwk(rsa_key("a"), "a"), public_jwk(rsa_key("b"), "b")]}
    )
    config = settings(jwt_algorithm="RS256", jwt_jwks_file=jwks)
    token = mint_token(config, "carol", private_key_file=key_file, kid="b")
    assert jwt.get_unverified_header(token)["kid"] == "b"
    assert TokenVerifier.from_settings(config).verify(token).subject == "carol"


def test_mint_token_refuses_without_the_key_material() -> None:
    with pytest.raises(ConfigError, match="TASKPLATFORM_JWT_SECRET"):
        mint_token(settings(), "alice")
    with pytest.raises(ConfigError, match="TASKPLATFORM_JWT_ALGORITHM=RS256"):
        mint_token(settings(jwt_algorithm="RS256", jwt_secret=SECRET), "alice")
    with pytest.raises(ConfigError, match="private key"):
        mint_token(settings(jwt_secret=SECRET), "alice", kid="a")
