"""Who is calling: roles, the principal, bearer JWT verification and minting.

Framework-free: the API turns an ``Authorization`` header into a ``Principal`` with
``parse_bearer`` and ``TokenVerifier.verify``; ``taskplatform token`` signs tokens with
``mint_token``. Only the configured algorithm is accepted, with keys configured beside it
(RFC 8725: never the token's own choice, never ``none``, no HS256/RS256 confusion).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from jwt.algorithms import RSAAlgorithm
from jwt.exceptions import InvalidJTIError, InvalidSubjectError
from jwt.types import Options

from taskplatform.errors import ConfigError, TaskPlatformError
from taskplatform.settings import PlatformSettings

log = logging.getLogger(__name__)

#: RFC 7518 §3.2: an HS256 key at least as long as the hash output.
MIN_SECRET_BYTES = 32
#: A secret of fewer distinct bytes (``"a" * 32``, ``"abab…"``) is a placeholder, not a key.
MIN_SECRET_DISTINCT_BYTES = 8
#: NIST SP 800-131A; PyJWT warns below this too.
MIN_RSA_BITS = 2048
#: Longer than any token this platform needs; bounds the work an unauthenticated caller causes.
MAX_TOKEN_CHARS = 8192
#: The store holds user ids of at most this many characters (``SubmitRequest.user_id``).
MAX_SUBJECT_CHARS = 255
#: RFC 6750 §2.1 ``b64token``.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class Role(str, Enum):
    """What a caller may do. Each role includes the ones below it: admin ⊇ operator ⊇ submitter."""

    SUBMITTER = "submitter"
    OPERATOR = "operator"
    ADMIN = "admin"

    def includes(self, other: Role) -> bool:
        """Whether holding this role grants ``other``."""
        return _RANK[self] >= _RANK[other]


_RANK = {Role.SUBMITTER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


@dataclass(frozen=True)
class Principal:
    """The authenticated caller.

    ``subject`` is the token's ``sub`` (the user id tasks are owned by); None only when
    authentication is disabled.
    """

    subject: str | None
    roles: frozenset[Role]

    def has(self, role: Role) -> bool:
        """Whether one of the caller's roles includes ``role``."""
        return any(held.includes(role) for held in self.roles)

    @property
    def can_see_all(self) -> bool:
        """Operators and admins see and cancel every user's tasks."""
        return self.has(Role.OPERATOR)

    @property
    def is_admin(self) -> bool:
        return self.has(Role.ADMIN)

    def may_see(self, user_id: str | None) -> bool:
        """Whether a task owned by ``user_id`` is visible to this caller."""
        return self.can_see_all or (self.subject is not None and user_id == self.subject)

    def describe_roles(self) -> str:
        return ", ".join(sorted(r.value for r in self.roles)) or "none"


#: Every request of an API with authentication disabled.
UNAUTHENTICATED_ADMIN = Principal(subject=None, roles=frozenset({Role.ADMIN}))


class AuthFailure(str, Enum):
    """Why a request was not authenticated; the short text goes into ``WWW-Authenticate``."""

    MISSING_TOKEN = "missing token"  # noqa: S105 (a reason, not a secret)
    MALFORMED_HEADER = "malformed authorization header"
    MALFORMED_TOKEN = "malformed token"  # noqa: S105
    ALGORITHM_NOT_ALLOWED = "algorithm not allowed"
    UNKNOWN_KID = "unknown kid"
    BAD_SIGNATURE = "bad signature"
    EXPIRED = "token expired"
    NOT_YET_VALID = "token not yet valid"
    WRONG_AUDIENCE = "wrong audience"
    WRONG_ISSUER = "wrong issuer"
    MISSING_CLAIM = "missing claim"
    INVALID_CLAIM = "invalid claim"


class AuthenticationError(TaskPlatformError):
    """A request carried no usable bearer token; ``reason`` says which check failed."""

    def __init__(self, reason: AuthFailure, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}")


def parse_bearer(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header value."""
    if authorization is None or not authorization.strip():
        raise AuthenticationError(
            AuthFailure.MISSING_TOKEN, "authentication required: send 'Authorization: Bearer <token>'"
        )
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or len(token) > MAX_TOKEN_CHARS or not _B64TOKEN.fullmatch(token):
        raise AuthenticationError(
            AuthFailure.MALFORMED_HEADER, "expected 'Authorization: Bearer <token>' with one JWT"
        )
    return token


# ---------------------------------------------------------------- keys
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


def _secret(settings: PlatformSettings, otherwise: str) -> bytes:
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


def _verification_key(settings: PlatformSettings) -> VerifyKey | KeySet:
    if settings.jwt_algorithm == "HS256":
        return _secret(
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


# ---------------------------------------------------------------- verification
#: PyJWT's errors, each with the reason and the fixed text a caller gets: the library's own
#: messages quote decoder internals (``'utf-8' codec can't decode byte 0xb7 …``), so they only
#: go to the DEBUG log.
_FAILURES: tuple[tuple[type[jwt.PyJWTError], AuthFailure, str], ...] = (
    (jwt.ExpiredSignatureError, AuthFailure.EXPIRED, "the token has expired (exp)"),
    (
        jwt.ImmatureSignatureError,
        AuthFailure.NOT_YET_VALID,
        "the token is not valid yet (nbf or iat in the future)",
    ),
    (jwt.InvalidAudienceError, AuthFailure.WRONG_AUDIENCE, "the token is not meant for this API (aud)"),
    (jwt.InvalidIssuerError, AuthFailure.WRONG_ISSUER, "the token was not issued by the configured issuer"),
    (jwt.MissingRequiredClaimError, AuthFailure.MISSING_CLAIM, "the token lacks a required claim"),
    (
        jwt.InvalidSignatureError,
        AuthFailure.BAD_SIGNATURE,
        "the signature does not verify with the configured key",
    ),
    (jwt.InvalidAlgorithmError, AuthFailure.ALGORITHM_NOT_ALLOWED, "the token's algorithm is not accepted"),
    (jwt.InvalidIssuedAtError, AuthFailure.INVALID_CLAIM, "iat must be a number of seconds"),
    (InvalidSubjectError, AuthFailure.INVALID_CLAIM, "sub must be a string"),
    (InvalidJTIError, AuthFailure.INVALID_CLAIM, "jti must be a string"),
)
_MALFORMED = "the token is not a well-formed JWT (three base64url parts: JSON header, JSON claims, signature)"


def _failure(exc: jwt.PyJWTError) -> AuthenticationError:
    log.debug("bearer token rejected: %s: %s", type(exc).__name__, exc)
    for kind, reason, detail in _FAILURES:
        if isinstance(exc, kind):
            if isinstance(exc, jwt.MissingRequiredClaimError):  # names one of our own required claims
                detail = f"the token lacks the required claim {exc.claim!r}"
            return AuthenticationError(reason, detail)
    return AuthenticationError(AuthFailure.MALFORMED_TOKEN, _MALFORMED)


class TokenVerifier:
    """Checks bearer JWTs against the configured algorithm, key(s), issuer and audience.

    Required claims: ``exp`` and ``sub``, plus ``iss`` / ``aud`` when configured (an empty
    setting is not checked); ``nbf`` and ``iat`` are checked when present. The times must be
    JSON numbers, and a token may live at most ``max_lifetime`` seconds (``exp`` no further
    ahead of now, nor of ``iat``). Build it with
    ``from_settings``, which is also the configuration check.
    """

    def __init__(
        self,
        *,
        algorithm: str,
        key: VerifyKey | KeySet,
        issuer: str = "",
        audience: str = "",
        leeway: float = 0.0,
        roles_claim: str = "roles",
        max_lifetime: float = 86400.0,
    ) -> None:
        self.algorithm = algorithm
        self._max_lifetime = max_lifetime
        self._key = key
        self._issuer = issuer or None
        self._audience = audience or None
        self._leeway = leeway
        self._roles_claim = roles_claim
        required = ["exp", "sub"] + ["iss"] * bool(issuer) + ["aud"] * bool(audience)
        self._options: Options = {
            "require": required,
            "verify_iss": bool(issuer),
            "verify_aud": bool(audience),
            # Key sizes are checked at start-up; this makes a regression an error, not a warning.
            "enforce_minimum_key_length": True,
        }

    @classmethod
    def from_settings(cls, settings: PlatformSettings) -> TokenVerifier:
        """The verifier ``settings`` describe; ConfigError naming the variables to set when the
        key material for ``JWT_ALGORITHM`` is missing, unreadable or unfit."""
        return cls(
            algorithm=settings.jwt_algorithm,
            key=_verification_key(settings),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway=settings.jwt_leeway_seconds,
            roles_claim=settings.jwt_roles_claim,
            max_lifetime=settings.jwt_max_lifetime_seconds,
        )

    def verify(self, token: str) -> Principal:
        """The principal a token names; AuthenticationError saying why when it is not acceptable."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _failure(exc) from None
        if header.get("alg") != self.algorithm:
            raise AuthenticationError(
                AuthFailure.ALGORITHM_NOT_ALLOWED, f"this API accepts {self.algorithm} tokens only"
            )
        key = self._key.select(header.get("kid")) if isinstance(self._key, KeySet) else self._key
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[self.algorithm],
                options=self._options,
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
            )
        except jwt.PyJWTError as exc:
            raise _failure(exc) from None
        self._check_lifetime(claims)
        return Principal(subject=_subject(claims), roles=self._roles(claims))

    def _check_lifetime(self, claims: Mapping[str, Any]) -> None:
        """PyJWT accepts ``"exp": "9999999999"`` (it calls ``int()``) and ``1e308``; a NumericDate
        is a JSON number (RFC 7519 §2), and no token of ours outlives ``max_lifetime``."""
        times = {name: claims[name] for name in ("exp", "iat", "nbf") if name in claims}
        for name, value in times.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise AuthenticationError(
                    AuthFailure.INVALID_CLAIM, f"{name} must be a number of seconds since the epoch"
                )
        limit = self._max_lifetime
        ahead = times["exp"] - time.time()
        if ahead > limit + self._leeway or times["exp"] - times.get("iat", times["exp"]) > limit:
            raise AuthenticationError(
                AuthFailure.INVALID_CLAIM,
                f"the token lives longer than this API accepts (exp at most {limit:.0f} s after iat and now)",
            )

    def _roles(self, claims: Mapping[str, Any]) -> frozenset[Role]:
        value = claims.get(self._roles_claim)
        if value is None:
            return frozenset()
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise AuthenticationError(
                AuthFailure.INVALID_CLAIM,
                f"the {self._roles_claim!r} claim must be a list of strings or a space-separated string",
            )
        known = {r.value for r in Role}
        return frozenset(Role(v) for v in value if v in known)  # other roles are someone else's


def _printable(char: str) -> bool:
    """Not a control, format (bidi overrides, zero-width), surrogate, private or unassigned
    character, nor a line or paragraph separator: none belongs in a user id."""
    category = unicodedata.category(char)
    return not category.startswith("C") and category not in ("Zl", "Zp")


def _subject(claims: Mapping[str, Any]) -> str:
    """The user id: it lands in logs, audit records and the store, so it must read as what it is
    (``"alice\\nadmin"`` would forge a log line, ``"alice "`` pass for alice)."""
    subject = str(claims["sub"])  # a string: PyJWT required and checked it
    if (
        not subject.strip()
        or subject != subject.strip()
        or len(subject) > MAX_SUBJECT_CHARS
        or not all(map(_printable, subject))
    ):
        raise AuthenticationError(
            AuthFailure.INVALID_CLAIM,
            f"sub must be a user id of 1 to {MAX_SUBJECT_CHARS} printable characters, "
            "without control characters or leading or trailing spaces",
        )
    return subject


# ---------------------------------------------------------------- minting
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
    return jwt.encode(claims, _secret(settings, "sign with an RS256 private key instead"), algorithm="HS256")
