"""Minting tokens (``taskplatform token``): HS256 with ``JWT_SECRET``, or RS256 with a private key."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jwt

from taskplatform.auth.keys import hs256_secret, load_private_key
from taskplatform.auth.principal import Role
from taskplatform.errors import ConfigError
from taskplatform.settings import PlatformSettings


def mint_token(
    settings: PlatformSettings,
    subject: str,
    *,
    roles: Iterable[Role] = (Role.SUBMITTER,),
    ttl_seconds: float = 3600,
    private_key_file: Path | None = None,
    kid: str | None = None,
    now: float | None = None,
) -> str:
    """A signed token with ``sub``, roles, ``iss``/``aud`` (as configured), ``iat`` and ``exp``.

    With ``private_key_file`` it is RS256 (``kid`` in its header when given); otherwise HS256
    with ``JWT_SECRET``. ConfigError when that key material is missing or unfit.
    """
    if ttl_seconds > settings.jwt_max_lifetime_seconds:
        raise ConfigError(
            f"a token lifetime of {ttl_seconds:.0f} s exceeds TASKPLATFORM_JWT_MAX_LIFETIME_SECONDS="
            f"{settings.jwt_max_lifetime_seconds:.0f}; the API would refuse it: ask for less or raise that"
        )
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": subject,
        settings.jwt_roles_claim: sorted({Role(r).value for r in roles}),
        "iat": issued,
        "exp": issued + int(ttl_seconds),
    }
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    headers = {"kid": kid} if kid is not None else None
    if private_key_file is not None:
        return jwt.encode(claims, load_private_key(private_key_file), algorithm="RS256", headers=headers)
    if kid is not None:
        raise ConfigError("a kid names an RS256 key: give the private key file with it")
    if settings.jwt_algorithm == "RS256":
        raise ConfigError(
            "TASKPLATFORM_JWT_ALGORITHM=RS256: tokens are signed with the private key; pass its PEM file"
        )
    return jwt.encode(
        claims, hs256_secret(settings, "sign with an RS256 private key instead"), algorithm="HS256"
    )
