"""Who is calling: the roles, the authenticated principal, and the bearer header it comes from.

Framework-free; the API's dependency (``taskplatform/api/auth.py``) turns a request into a
``Principal`` with ``parse_bearer`` and ``TokenVerifier.verify`` (``auth/verify.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from taskplatform.errors import TaskPlatformError

#: Longer than any token this platform needs; bounds the work an unauthenticated caller causes.
MAX_TOKEN_CHARS = 8192
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

#: The platform itself, for internal callers of the task commands (and tests): it sees and
#: changes every user's task. Callers acting for a user pass that user's principal instead.
SYSTEM = Principal(subject=None, roles=frozenset({Role.ADMIN}))


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
