"""Bearer JWT verification: the configured algorithm only, with keys configured beside it
(RFC 8725: never the token's own choice, never ``none``, no HS256/RS256 confusion), and the
claims checked into a ``Principal``.
"""

from __future__ import annotations

import logging
import math
import time
import unicodedata
from collections.abc import Mapping
from typing import Any

import jwt
from jwt.exceptions import InvalidJTIError, InvalidSubjectError
from jwt.types import Options

from taskplatform.auth.keys import KeySet, VerifyKey, verification_key
from taskplatform.auth.principal import AuthenticationError, AuthFailure, Principal, Role
from taskplatform.settings import PlatformSettings

#: The name operators filter the authentication debug lines on (kept from before the package split).
log = logging.getLogger("taskplatform.auth")

#: The store holds user ids of at most this many characters (``SubmitRequest.user_id``).
MAX_SUBJECT_CHARS = 255


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
            key=verification_key(settings),
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
