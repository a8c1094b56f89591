"""Keys and tokens for the authentication tests: an HS256 secret, RSA keys, PEM and JWKS files."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

SECRET = "test-secret-that-is-long-enough-for-hs256"  # 41 bytes
OTHER_SECRET = "another-secret-that-is-long-enough-too!!"
ISSUER = AUDIENCE = "taskplatform"


@functools.cache
def rsa_key(name: str = "a", bits: int = 2048) -> rsa.RSAPrivateKey:
    """One RSA key per name for the whole session (generating them is slow)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_jwk(key: rsa.RSAPrivateKey, kid: str | None = None, **fields: Any) -> dict[str, Any]:
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.pop("key_ops", None)
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(fields)
    return jwk


def write(path: Path, data: bytes | dict[str, Any]) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
    return path


def claims(sub: str | None = "alice", roles: Any = ("submitter",), **overrides: Any) -> dict[str, Any]:
    """Valid claims for four hours; an override of None drops that claim.

    Modules mint their tokens at import, when pytest collects them, and the whole suite may run for
    90 minutes: an hour's token expired before the last modules ran (every answer a 401).
    """
    now = int(time.time())
    values: dict[str, Any] = {
        "sub": sub,
        "roles": list(roles) if isinstance(roles, tuple) else roles,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 4 * 3600,  # under the API's default longest lifetime, a day
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def hs256(payload: dict[str, Any], secret: str = SECRET, **headers: Any) -> str:
    return jwt.encode(payload, secret, algorithm="HS256", headers=headers or None)


def rs256(payload: dict[str, Any], key: rsa.RSAPrivateKey, kid: str | None = None) -> str:
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid} if kid else None)


def token(sub: str = "alice", *roles: str, **overrides: Any) -> str:
    """An HS256 token signed with SECRET; roles default to submitter."""
    return hs256(claims(sub, roles or ("submitter",), **overrides))


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_hs256(payload: dict[str, Any], key: bytes, alg: str = "HS256") -> str:
    """HMAC-signed with any bytes as the key, e.g. an RSA public key (PyJWT refuses to)."""
    head = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = _b64(json.dumps(payload).encode())
    signature = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(signature)}"


def unsigned(payload: dict[str, Any]) -> str:
    """``alg: none``: no signature at all."""
    head = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{head}.{_b64(json.dumps(payload).encode())}."
