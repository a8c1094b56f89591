"""Who is calling: roles and the principal (``principal``), bearer JWT verification
(``verify``), key material (``keys``) and minting (``mint``).

Framework-free; ``taskplatform/api/auth.py`` is the FastAPI dependency built on it.
"""

from taskplatform.auth.keys import (
    MIN_RSA_BITS,
    MIN_SECRET_BYTES,
    MIN_SECRET_DISTINCT_BYTES,
    KeySet,
    VerifyKey,
    load_key_set,
    load_private_key,
    load_public_key,
)
from taskplatform.auth.mint import mint_token
from taskplatform.auth.principal import (
    MAX_TOKEN_CHARS,
    SYSTEM,
    UNAUTHENTICATED_ADMIN,
    AuthenticationError,
    AuthFailure,
    Principal,
    Role,
    parse_bearer,
)
from taskplatform.auth.verify import MAX_SUBJECT_CHARS, TokenVerifier

__all__ = [
    "MAX_SUBJECT_CHARS",
    "MAX_TOKEN_CHARS",
    "MIN_RSA_BITS",
    "MIN_SECRET_BYTES",
    "MIN_SECRET_DISTINCT_BYTES",
    "SYSTEM",
    "UNAUTHENTICATED_ADMIN",
    "AuthFailure",
    "AuthenticationError",
    "KeySet",
    "Principal",
    "Role",
    "TokenVerifier",
    "VerifyKey",
    "load_key_set",
    "load_private_key",
    "load_public_key",
    "mint_token",
    "parse_bearer",
]
