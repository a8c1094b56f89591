"""Serving the API to a test: the app owning a runtime, and clients calling it in-process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI

from taskplatform.api.app import create_app
from taskplatform.runtime import Runtime


@contextlib.asynccontextmanager
async def served(runtime: Runtime) -> AsyncIterator[FastAPI]:
    """The app owning ``runtime``, started (its lifespan), once the broker topology is ready."""
    app = create_app(runtime=runtime)
    async with app.router.lifespan_context(app):
        await runtime.broker_ready.wait()
        yield app


def client_of(
    app: FastAPI, *, headers: dict[str, str] | None = None, address: tuple[str, int] | None = None
) -> httpx.AsyncClient:
    """A client calling ``app`` in-process (from ``address``, when given)."""
    transport = (
        httpx.ASGITransport(app=app) if address is None else httpx.ASGITransport(app=app, client=address)
    )
    return httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers)
