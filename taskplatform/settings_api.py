"""The API's settings: authentication, the token clients send, and the HTTP server's bounds.
Part of ``PlatformSettings`` (``taskplatform/settings.py``), which reads them from the
environment with the ``TASKPLATFORM_`` prefix like every other setting."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr


class ApiSettings(BaseModel):
    """The API's part of ``PlatformSettings`` (never built on its own)."""

    # authentication (the API) and the token clients send
    auth: Literal["jwt", "disabled"] = Field(
        default="jwt",
        description="`jwt`: every API request needs a bearer JWT; `disabled`: none does (each acts as an "
        "admin). `taskplatform dev` defaults to `disabled`, everything else to `jwt`.",
    )
    jwt_algorithm: Literal["HS256", "RS256"] = Field(
        default="HS256", description="The one algorithm tokens are accepted (and minted) with."
    )
    jwt_secret: SecretStr | None = Field(
        default=None,
        description="HS256 shared secret, at least 32 bytes of at least 8 distinct values; also what "
        "`taskplatform token` signs with.",
    )
    jwt_public_key_file: Path | None = Field(
        default=None,
        description="RS256: a PEM public key (or certificate) file; exactly one of this and the JWKS file.",
    )
    jwt_jwks_file: Path | None = Field(
        default=None,
        description="RS256: a JWKS file, keys chosen by the token's `kid` (a single key also serves tokens "
        "without one).",
    )
    jwt_issuer: str = Field(default="taskplatform", description="Required `iss` claim; empty: not checked.")
    jwt_audience: str = Field(default="taskplatform", description="Required `aud` claim; empty: not checked.")
    jwt_leeway_seconds: float = Field(
        default=30.0, ge=0, description="Clock skew allowed on `exp` / `nbf` / `iat`."
    )
    jwt_max_lifetime_seconds: float = Field(
        default=86400.0,
        gt=0,
        description="Longest a token may live: one whose `exp` lies further ahead (of now, or of its `iat`) "
        "is refused, and `taskplatform token --ttl` mints no longer one.",
    )
    jwt_roles_claim: str = Field(
        default="roles", description="Claim holding the caller's roles (a list, or a space-separated string)."
    )
    protect_ops_endpoints: bool = Field(
        default=False,
        description="`/readyz` and `/metrics` need an operator's token too. Off by default so probes and "
        "Prometheus need none: keep those ports on a private network, or turn this on.",
    )
    token: SecretStr | None = Field(
        default=None, description="Bearer token the CLI and `TaskPlatformClient.from_settings` send."
    )

    # API
    api_host: str = Field(default="127.0.0.1", description="The address the API binds.")
    api_port: int = Field(default=8000, ge=0, le=65535, description="The port the API binds.")
    api_url: str | None = Field(
        default=None,
        description="Where clients (CLI, Python client) reach the API; unset: derived from host and port.",
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Request body limit; a larger body answers 413."
    )
    api_header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a connection has to send a complete request head, from its opening or its "
        "previous response (also the keep-alive idle time-out); then it is closed.",
    )
    api_body_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a request body has to arrive whole after its head; then 408 and the connection "
        "closes.",
    )
    api_max_connections: int = Field(
        default=1000,
        ge=1,
        description="Connections plus requests in progress per API process above which requests answer 503.",
    )
    api_max_buffered_bytes: int = Field(
        default=64 * 1_048_576,
        ge=1024,
        description="Request body bytes one API process holds at once; a body beyond answers 503 + "
        "Retry-After.",
    )
    api_max_page_bytes: int = Field(
        default=4 * 1_048_576,
        ge=1024,
        description="Bytes of items one list page holds: the page ends early, with a `next_cursor`, before "
        "the item that would pass it (a page has at least one item).",
    )
    api_processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="API processes (uvicorn workers); above 1, metrics use prometheus-client's multiprocess "
        "mode (`PROMETHEUS_MULTIPROC_DIR`, a fresh temporary directory unless set).",
    )
    grpc_host: str = Field(
        default="127.0.0.1",
        description="The address the gRPC front door binds (`taskplatform grpc`, and `dev` with "
        "`GRPC_ENABLED`).",
    )
    grpc_port: int = Field(
        default=50051, ge=0, le=65535, description="The gRPC front door's port (0: any free)."
    )
    grpc_enabled: bool = Field(
        default=True,
        description="Whether `taskplatform dev` serves gRPC beside HTTP (`taskplatform grpc` always does).",
    )
    grpc_max_message_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        description="The largest gRPC request one call may send; a larger one is refused "
        "(RESOURCE_EXHAUSTED).",
    )
    grpc_max_watches_per_caller: int = Field(
        default=32,
        ge=1,
        description="WatchTask streams one caller (a user, or an address without a token) may hold open "
        "at once on one process; one more is refused (RESOURCE_EXHAUSTED), so one caller cannot take "
        "every call slot.",
    )
    api_access_log: bool = Field(
        default=True,
        description="One INFO line per API request on the `taskplatform.access` logger (method, route, "
        "status, duration, user id, client; never a header, token, query or body); successful probes and "
        "scrapes at DEBUG.",
    )
