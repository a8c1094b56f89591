"""The key material tokens are verified and signed with: HS256 secrets, RSA public keys (PEM or
a JWKS key set chosen by ``kid``) and RSA private keys. Loading is also the configuration
check: unfit material is a ConfigError naming the variable to fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from jwt.algorithms import RSAAlgorithm

from taskplatform.auth.principal import AuthenticationError, AuthFailure
from taskplatform.errors import ConfigError
from taskplatform.settings import PlatformSettings

#: RFC 7518 §3.2: an HS256 key at least as long as the hash output.
MIN_SECRET_BYTES = 32
#: A secret of fewer distinct bytes (``"a" * 32``, ``"abab…"``) is a placeholder, not a key.
MIN_SECRET_DISTINCT_BYTES = 8
#: NIST SP 800-131A; PyJWT warns below this too.
MIN_RSA_BITS = 2048


VerifyKey = bytes | RSAPublicKey


@dataclass(frozen=True)
class KeySet:
    """RS256 public keys from a JWKS file, chosen by the token header's ``kid``."""

    keys: tuple[tuple[str | None, RSAPublicKey], ...]

    def select(self, kid: str | None) -> RSAPublicKey:
        if kid is None:
            if len(self.keys) == 1:  # one key: nothing to choose between
                return self.keys[0][1]
            raise AuthenticationError(
                AuthFailure.UNKNOWN_KID, f"the token names no key (kid); the key set holds {len(self.keys)}"
            )
        for key_id, key in self.keys:
            if key_id == kid:
                return key
        raise AuthenticationError(AuthFailure.UNKNOWN_KID, "the token's kid names no key of the key set")


def _read(variable: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"TASKPLATFORM_{variable}={path}: cannot read it ({exc}); fix the path") from None


def _check_rsa_size(variable: str, path: Path, bits: int) -> None:
    if bits < MIN_RSA_BITS:
        raise ConfigError(
            f"TASKPLATFORM_{variable}={path} holds a {bits}-bit RSA key; RS256 needs at least {MIN_RSA_BITS}"
        )


def load_public_key(path: Path) -> RSAPublicKey:
    """An RSA public key from a PEM file (a public key or an X.509 certificate)."""
    data = _read("JWT_PUBLIC_KEY_FILE", path)
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: object = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError(
            f"TASKPLATFORM_JWT_PUBLIC_KEY_FILE={path} is not a PEM public key or certificate ({exc})"
        ) from None
    if not isinstance(key, RSAPublicKey):
        raise ConfigError(
            f"TASKPLATFORM_JWT_PUBLIC_KEY_FILE={path} holds a {type(key).__name__}; RS256 needs an RSA key"
        )
    _check_rsa_size("JWT_PUBLIC_KEY_FILE", path, key.key_size)
    return key


def _signing_jwk(entry: object) -> bool:
    """Whether a JWKS entry is meant for RS256 signatures (other entries are skipped)."""
    return (
        isinstance(entry, dict)
        and entry.get("kty") == "RSA"
        and entry.get("alg", "RS256") == "RS256"
        and entry.get("use", "sig") == "sig"
    )


def load_key_set(path: Path) -> KeySet:
    """The RS256 signing keys of a JWKS file (``{"keys": [...]}``)."""
    where = f"TASKPLATFORM_JWT_JWKS_FILE={path}"
    try:
        document = json.loads(_read("JWT_JWKS_FILE", path))
    except ValueError as exc:
        raise ConfigError(f"{where} is not JSON ({exc})") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f'{where} is not a JWKS: expected {{"keys": [...]}}')
    keys: list[tuple[str | None, RSAPublicKey]] = []
    for index, entry in enumerate(entries):
        if not _signing_jwk(entry):
            continue
        kid = entry.get("kid")
        if "d" in entry:
            raise ConfigError(f"{where}: key {index} holds private key material; publish public keys only")
        if kid is not None and not isinstance(kid, str):
            raise ConfigError(f"{where}: key {index} has a kid that is not a string")
        try:
            key = RSAAlgorithm.from_jwk(entry)
        except (jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{where}: key {index} is not a valid RSA JWK ({exc})") from None
        assert isinstance(key, RSAPublicKey)  # no "d": from_jwk builds a public key
        _check_rsa_size("JWT_JWKS_FILE", path, key.key_size)
        keys.append((kid, key))
    if not keys:
        raise ConfigError(f"{where} holds no RSA key for RS256 signatures (kty RSA, alg RS256, use sig)")
    kids = [kid for kid, _ in keys]
    if len(keys) > 1 and (None in kids or len(set(kids)) != len(kids)):
        raise ConfigError(f"{where}: with several keys, each needs its own kid so tokens can name theirs")
    return KeySet(tuple(keys))


def hs256_secret(settings: PlatformSettings, otherwise: str) -> bytes:
    if settings.jwt_secret is None:
        raise ConfigError(
            f"HS256 needs TASKPLATFORM_JWT_SECRET (at least {MIN_SECRET_BYTES} bytes): set it, or {otherwise}"
        )
    secret = settings.jwt_secret.get_secret_value().encode()
    make_one = "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"TASKPLATFORM_JWT_SECRET is {len(secret)} bytes; HS256 needs at least {MIN_SECRET_BYTES} "
            + make_one
        )
    if len(set(secret)) < MIN_SECRET_DISTINCT_BYTES:
        raise ConfigError(
            f"TASKPLATFORM_JWT_SECRET holds only {len(set(secret))} distinct bytes, too little variety to be "
            f"a key (at least {MIN_SECRET_DISTINCT_BYTES}); use a random secret {make_one}"
        )
    return secret


def verification_key(settings: PlatformSettings) -> VerifyKey | KeySet:
    if settings.jwt_algorithm == "HS256":
        return hs256_secret(
            settings,
            "set TASKPLATFORM_JWT_ALGORITHM=RS256 with TASKPLATFORM_JWT_PUBLIC_KEY_FILE or "
            "TASKPLATFORM_JWT_JWKS_FILE, or (local development only) TASKPLATFORM_AUTH=disabled",
        )
    pem, jwks = settings.jwt_public_key_file, settings.jwt_jwks_file
    if pem is not None and jwks is None:
        return load_public_key(pem)
    if jwks is not None and pem is None:
        return load_key_set(jwks)
    raise ConfigError(
        "TASKPLATFORM_JWT_ALGORITHM=RS256 needs exactly one of TASKPLATFORM_JWT_PUBLIC_KEY_FILE "
        "(a PEM public key) or TASKPLATFORM_JWT_JWKS_FILE (a JWKS); "
        + ("neither is set" if pem is None else "both are set")
    )


def load_private_key(path: Path) -> RSAPrivateKey:
    """An unencrypted RSA private key from a PEM file, for signing RS256 tokens."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the private key {path} ({exc})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, RSAPrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}; RS256 needs an RSA key")
    if key.key_size < MIN_RSA_BITS:
        raise ConfigError(f"{path} holds a {key.key_size}-bit RSA key; RS256 needs at least {MIN_RSA_BITS}")
    return key
