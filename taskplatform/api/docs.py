"""The documentation pages, served offline: Swagger UI (``/docs``) and ReDoc (``/redoc``).

FastAPI's own pages load their scripts and style sheets from a CDN, so without internet access
they stay blank. Here they come from the pinned ``fastapi-offline`` package (FastAPI's
self-hosting recipe, with Swagger UI's and ReDoc's files shipped in the wheel), served by the
API itself under ``/docs/assets``. Like ``/openapi.json``, the pages and their assets are public.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import HTMLResponse
from fastapi_offline import FastAPIOffline

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
#: Where the pages' scripts, style sheet and icon are served.
ASSETS_URL = "/docs/assets"
#: Swagger UI would send the document to swagger.io's online validator for its badge.
SWAGGER_UI_PARAMETERS: dict[str, Any] = {"validatorUrl": None}
#: ReDoc's side menu always shows Redocly's logo from Redocly's CDN (hidden when it fails to
#: load): the page may show images from this API only, so the browser never asks for it.
REDOC_CSP = "img-src 'self' data:"


def documented_app(**kwargs: Any) -> FastAPI:
    """``FastAPI(**kwargs)`` with Swagger UI at DOCS_URL and ReDoc at REDOC_URL, both needing
    nothing beyond this API (``/openapi.json`` and ASSETS_URL)."""
    app = FastAPIOffline(
        docs_url=DOCS_URL,
        redoc_url=None,  # served below, with its image policy
        static_url=ASSETS_URL,
        swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        **kwargs,
    )

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = REDOC_CSP
        return page

    return app
