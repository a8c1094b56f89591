"""Authentication and roles for the routes: the principal dependency and the role guards.

``create_app`` builds one ``Authenticator`` (which checks the configuration) and keeps it in
``app.state``; every ``/api/v1`` router depends on a role guard, which depends on
``authenticate``. Failures answer in the one error shape: 401 with an RFC 6750 challenge,
or 403 naming the role needed.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from taskplatform.api.errors import ErrorBody
from taskplatform.auth import (
    UNAUTHENTICATED_ADMIN,
    AuthenticationError,
    AuthFailure,
    Principal,
    Role,
    TokenVerifier,
    parse_bearer,
)
from taskplatform.settings import PlatformSettings

log = logging.getLogger(__name__)

REALM = "taskplatform"

#: Declares the scheme in OpenAPI; the header itself is read by ``authenticate``, which tells
#: a missing header from a malformed one (HTTPBearer answers None for both).
bearer_scheme = HTTPBearer(
    auto_error=False,
    bearerFormat="JWT",
    description="A JWT signed for this API (`taskplatform token` mints one); its `sub` is the user id.",
)

#: The responses every protected route may give, for the OpenAPI document.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorBody,
        "description": "No bearer token, or one that is malformed, expired or not signed for this API",
        "headers": {
            "WWW-Authenticate": {
                "description": 'An RFC 6750 challenge: `Bearer realm="taskplatform"`, with `error` and '
                "`error_description` when a token was sent",
                "schema": {"type": "string"},
            }
        },
    },
    403: {"model": ErrorBody, "description": "The token's roles do not allow this"},
}


class Authenticator:
    """Turns an ``Authorization`` header into a principal; with no verifier (authentication
    disabled) every request is an admin without a subject."""

    def __init__(self, verifier: TokenVerifier | None, *, protect_ops: bool = False) -> None:
        self.verifier = verifier
        #: Whether ``/readyz`` and ``/metrics`` need an operator (``PROTECT_OPS_ENDPOINTS``).
        self.protect_ops = protect_ops

    @classmethod
    def from_settings(cls, settings: PlatformSettings) -> Authenticator:
        """ConfigError when ``AUTH=jwt`` lacks the key material its algorithm needs."""
        return cls(
            TokenVerifier.from_settings(settings) if settings.auth == "jwt" else None,
            protect_ops=settings.protect_ops_endpoints,
        )

    @property
    def enabled(self) -> bool:
        return self.verifier is not None

    def principal_of(self, authorization: str | None) -> Principal:
        """The caller an ``Authorization`` value names (any front door); AuthenticationError when
        rejected (``rejection`` words it)."""
        if self.verifier is None:
            return UNAUTHENTICATED_ADMIN
        return self.verifier.verify(parse_bearer(authorization))

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller; HTTPException 401 with a ``WWW-Authenticate`` challenge when rejected."""
        try:
            return self.principal_of(authorization)
        except AuthenticationError as exc:
            headers = {"WWW-Authenticate": challenge(exc.reason)}
            raise HTTPException(401, rejection(exc), headers=headers) from None


def rejection(exc: AuthenticationError) -> str:
    """What a rejected caller is told (HTTP's 401, gRPC's UNAUTHENTICATED)."""
    if exc.reason is AuthFailure.MISSING_TOKEN:
        return exc.detail
    return f"invalid bearer token ({exc.reason.value}): {exc.detail}"


def role_refusal(principal: Principal, role: Role) -> str | None:
    """Why ``principal`` lacks ``role`` (HTTP's 403, gRPC's PERMISSION_DENIED), or None."""
    if principal.has(role):
        return None
    above = [r.value for r in Role if r.includes(role) and r is not role]
    needed = " or ".join([role.value, *above])
    return f"this needs the {needed} role; the token's roles: {principal.describe_roles()}"


def challenge(reason: AuthFailure) -> str:
    """The ``WWW-Authenticate`` value for a rejected request (RFC 6750 §3)."""
    value = f'Bearer realm="{REALM}"'
    if reason is AuthFailure.MISSING_TOKEN:  # §3.1: no error code when no credentials were sent
        return value
    error = "invalid_request" if reason is AuthFailure.MALFORMED_HEADER else "invalid_token"
    return f'{value}, error="{error}", error_description="{reason.value}"'


async def authenticate(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
) -> Principal:
    """The caller of this request (FastAPI caches it per request), also kept in the request
    state for the access log."""
    authenticator: Authenticator = request.app.state.authenticator
    principal = authenticator.authenticate(request.headers.get("authorization"))
    request.state.principal = principal
    return principal


class RoleGuard:
    """A dependency: the principal, if one of its roles includes ``role``; else 403."""

    def __init__(self, role: Role) -> None:
        self.role = role

    async def __call__(self, principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        return self.check(principal)

    def check(self, principal: Principal) -> Principal:
        """``principal``, if it has the role; else the 403."""
        refusal = role_refusal(principal, self.role)
        if refusal is not None:
            raise HTTPException(403, refusal)
        return principal


# One instance each, so FastAPI resolves a guard once per request however often it is named.
require_submitter = RoleGuard(Role.SUBMITTER)
require_operator = RoleGuard(Role.OPERATOR)


async def require_operator_if_protected(request: Request) -> None:
    """The guard of the operations endpoints (``/readyz``, ``/metrics``): an operator's token
    when ``PROTECT_OPS_ENDPOINTS`` is on, nothing otherwise (probes and scrapers send none)."""
    authenticator: Authenticator = request.app.state.authenticator
    if authenticator.protect_ops:
        principal = authenticator.authenticate(request.headers.get("authorization"))
        request.state.principal = principal  # for the access log
        require_operator.check(principal)


SubmitterDep = Annotated[Principal, Depends(require_submitter)]
OperatorDep = Annotated[Principal, Depends(require_operator)]


def install_auth(app: FastAPI, authenticator: Authenticator) -> None:
    """Keep ``authenticator`` for the dependencies; without authentication, drop the security
    requirements from the OpenAPI document (nothing enforces them)."""
    app.state.authenticator = authenticator
    if authenticator.enabled:
        return

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    if isinstance(operation, dict):
                        operation.pop("security", None)
            schema.get("components", {}).pop("securitySchemes", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
