"""One error body shape for every failure: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from taskplatform.errors import InvalidInputError, StoreError, UnknownTaskTypeError, UnreachableTargetError
from taskplatform.store.base import InvalidCursorError

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    """The error itself."""

    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorBody(BaseModel):
    """Every non-2xx response body."""

    error: ErrorDetail


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, details=details))
    return JSONResponse(
        status_code=status, content=body.model_dump(mode="json", exclude_none=True), headers=headers
    )


def field_errors(
    exc: ValidationError | RequestValidationError, prefix: tuple[str | int, ...] = ()
) -> list[dict[str, Any]]:
    """Pydantic errors as ``{"loc", "msg", "type"}`` items, with JSON-safe values only."""
    out = []
    for err in exc.errors():
        loc = [*prefix, *err.get("loc", ())]
        out.append(
            {
                "loc": [str(p) if not isinstance(p, int) else p for p in loc],
                "msg": err["msg"],
                "type": err["type"],
            }
        )
    return out


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    503: "unavailable",
}


#: The methods a 405's ``Allow`` may name.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route accepts at the request's path. (The router answers 405 from the
    first route whose path matches, so its ``Allow`` names that route's methods only.)"""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception the API can meet to the one error shape."""

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = field_errors(exc)
        where = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in details[:5])
        return error_response(422, "validation_error", f"invalid request: {where}", details)

    @app.exception_handler(UnknownTaskTypeError)
    async def _unknown_type(_: Request, exc: UnknownTaskTypeError) -> JSONResponse:
        return error_response(422, "unknown_task_type", str(exc), [{"registered_task_types": exc.registered}])

    @app.exception_handler(UnreachableTargetError)
    async def _unreachable(_: Request, exc: UnreachableTargetError) -> JSONResponse:
        details = [
            {"loc": ["target"], "msg": message, "type": "target_unreachable"} for _, message in exc.problems
        ]
        return error_response(
            422, "target_unreachable", f"the task cannot run where it is aimed: {exc}", details
        )

    @app.exception_handler(ValidationError)
    async def _params_invalid(_: Request, exc: ValidationError) -> JSONResponse:
        details = field_errors(exc, ("parameters",))
        where = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in details[:5])
        return error_response(422, "invalid_parameters", f"invalid parameters: {where}", details)

    @app.exception_handler(InvalidInputError)
    async def _unstorable(_: Request, exc: InvalidInputError) -> JSONResponse:
        details = [{"loc": list(exc.location), "msg": str(exc), "type": "unstorable_value"}]
        code = "invalid_parameters" if exc.location[:1] == ("parameters",) else "validation_error"
        return error_response(422, code, f"invalid input: {exc}", details)

    @app.exception_handler(InvalidCursorError)
    async def _bad_cursor(_: Request, exc: InvalidCursorError) -> JSONResponse:
        return error_response(422, "invalid_cursor", str(exc))

    @app.exception_handler(StoreError)
    async def _store_down(_: Request, exc: StoreError) -> JSONResponse:
        log.error("store error: %s", exc)
        return error_response(
            503,
            "store_unavailable",
            "the task store is unavailable; retry later",
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return error_response(exc.status_code, code, str(exc.detail), headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; see the server log")
