"""The documentation pages render with no network beyond the API itself.

A real ``taskplatform api`` process (JWT authentication on, operations endpoints protected) serves
Swagger UI and ReDoc; headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright)
loads them while every request to anything but loopback is refused and recorded. The pages must
list every operation of ``/openapi.json``, and no request may have left the machine. Screenshots
go to the test's temporary directory (their paths are printed; ``-s`` shows them).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import Browser, Page, Request, Route, async_playwright

from taskplatform.api.docs import ASSETS_URL, REDOC_CSP
from tests.api.tokens import SECRET, bearer, token
from tests.support.server import ROOT, free_port, stop
from tests.support.services import RABBITMQ_URL, in_ci

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = os.environ.get("TASKPLATFORM_TEST_CHROMIUM", "/usr/bin/chromium")
#: Bound on each wait for the API and the pages (a wait, not an assertion on speed).
WAIT_SECONDS = 60


def _require_chromium() -> None:
    if Path(CHROMIUM).exists() or shutil.which(CHROMIUM):
        return
    message = f"Chromium is required at {CHROMIUM} (apt-get install chromium; scripts/apt-tool does)"
    if in_ci():
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(f"SKIPPED LOUDLY: {message}")


def _is_loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True  # inline content: nothing is fetched
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def _api_process(tmp_path: Path, topology_prefix: str) -> Iterator[tuple[str, Path]]:
    port = free_port()
    log = tmp_path / "api.log"
    env = {
        **os.environ,
        "TASKPLATFORM_AUTH": "jwt",
        "TASKPLATFORM_JWT_SECRET": SECRET,
        "TASKPLATFORM_PROTECT_OPS_ENDPOINTS": "true",
        "TASKPLATFORM_AMQP_URL": RABBITMQ_URL,
        "TASKPLATFORM_STORE_URL": f"sqlite+aiosqlite:///{tmp_path / 'tasks.db'}",
        "TASKPLATFORM_TOPOLOGY_PREFIX": topology_prefix,
        "TASKPLATFORM_EXECUTOR_MODULES": '["tests.support.executables"]',
        "TASKPLATFORM_LOG_LEVEL": "WARNING",
        "TASKPLATFORM_SHUTDOWN_GRACE_SECONDS": "2",
    }
    command = [sys.executable, "-m", "taskplatform.cli", "api", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        yield f"http://127.0.0.1:{port}", log
    finally:
        stop(server)


async def _ready(base: str, log: Path) -> None:
    """Wait until the API answers ready (an operator's token: the endpoint is protected here)."""
    headers = bearer(token("docs-operator", "operator"))
    async with httpx.AsyncClient(base_url=base, timeout=2) as client:
        async with asyncio.timeout(WAIT_SECONDS):
            while True:
                try:
                    if (await client.get("/readyz", headers=headers)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if "Traceback" in log.read_text(errors="replace"):
                    pytest.fail(f"the API failed to start:\n{log.read_text(errors='replace')[-4000:]}")
                await asyncio.sleep(0.2)


@pytest.fixture
async def api(
    tmp_path: Path, topology_prefix: str, rabbitmq: Any
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The running API's base URL and its OpenAPI document (fetched without a token)."""
    _require_chromium()
    with _api_process(tmp_path, topology_prefix) as (base, log):
        await _ready(base, log)
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            spec = (await client.get("/openapi.json")).json()
        yield base, spec


class Offline:
    """A browser page whose requests may reach loopback only; every other request is aborted
    and recorded, and so is every request the page made at all, and every one the page's own
    Content-Security-Policy stopped before it was sent."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.refused: list[str] = []
        self.requested: list[str] = []
        self.kept_in_by_policy: list[str] = []
        self.answered: dict[str, int] = {}

    @classmethod
    async def open(cls, browser: Browser) -> Offline:
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        offline = cls(await context.new_page())
        await context.route("**/*", offline._route)
        context.on("request", lambda request: offline.requested.append(request.url))
        context.on("response", lambda response: offline.answered.__setitem__(response.url, response.status))
        context.on("requestfailed", offline._failed)
        return offline

    def _failed(self, request: Request) -> None:
        if request.failure == "csp":  # the browser never sent it
            self.kept_in_by_policy.append(request.url)

    async def _route(self, route: Route, request: Request) -> None:
        if _is_loopback(request.url):
            await route.continue_()
        else:
            self.refused.append(request.url)
            await route.abort("blockedbyclient")

    def outside(self) -> list[str]:
        """Requests beyond loopback that the browser sent or tried to send (the routing above
        refused them)."""
        asked = {u for u in self.requested if not _is_loopback(u)} - set(self.kept_in_by_policy)
        return sorted({*self.refused, *asked})


@contextlib.asynccontextmanager
async def _chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            # Nothing but loopback resolves either: a request that bypassed the page's routing
            # could not leave.
            args=[
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
                "--disable-background-networking",
            ],
        )
        try:
            yield browser
        finally:
            await browser.close()


def _summaries(spec: dict[str, Any]) -> list[str]:
    return [op["summary"] for path in spec["paths"].values() for op in path.values()]


async def test_swagger_ui_lists_every_operation_with_no_network_beyond_the_api(
    api: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    base, spec = api
    expected = _summaries(spec)
    assert len(expected) >= 10  # the whole API, not an empty document
    async with _chromium() as browser:
        offline = await Offline.open(browser)
        page = offline.page
        # The old URL, redirected to /docs, which renders from the API alone.
        await page.goto(f"{base}/swagger/index.html")
        await page.wait_for_selector(".opblock", timeout=WAIT_SECONDS * 1000)
        assert urlsplit(page.url).path == "/docs"
        listed = await page.locator(".opblock .opblock-summary-description").all_inner_texts()
        assert await page.locator(".opblock").count() == len(expected)
        assert sorted(listed) == sorted(expected)
        title = await page.locator(".information-container .title").inner_text()
        assert title.startswith("taskplatform")
        shot = tmp_path / "swagger-ui.png"
        await page.screenshot(path=str(shot), full_page=True)
        print(f"\nSwagger UI screenshot: {shot}")
    assert offline.outside() == [], f"requests beyond loopback: {offline.outside()}"
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert offline.answered.get(f"{base}{ASSETS_URL}/{asset}") == 200, offline.answered
    assert offline.answered.get(f"{base}/openapi.json") == 200


async def test_redoc_lists_every_operation_with_no_network_beyond_the_api(
    api: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    base, spec = api
    async with _chromium() as browser:
        offline = await Offline.open(browser)
        page = offline.page
        await page.goto(f"{base}/redoc")
        await page.wait_for_selector("[data-section-id]", timeout=WAIT_SECONDS * 1000)
        text = await page.locator("body").inner_text()
        missing = [s for s in _summaries(spec) if s not in text]
        assert missing == [], f"operations ReDoc does not show: {missing}"
        shot = tmp_path / "redoc.png"
        await page.screenshot(path=str(shot))
        print(f"\nReDoc screenshot: {shot}")
    assert offline.outside() == [], f"requests beyond loopback: {offline.outside()}"
    # ReDoc's menu asks for Redocly's logo; the page's policy keeps it from being sent.
    assert offline.kept_in_by_policy == ["https://cdn.redoc.ly/redoc/logo-mini.svg"]
    assert offline.answered.get(f"{base}{ASSETS_URL}/redoc.standalone.js") == 200, offline.answered


async def test_docs_and_their_assets_are_public_while_the_api_wants_a_token(
    api: tuple[str, dict[str, Any]],
) -> None:
    base, _ = api
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        assert (await client.get("/api/v1/tasks")).status_code == 401
        assert (await client.get("/readyz")).status_code == 401  # PROTECT_OPS_ENDPOINTS=true
        for path in ("/docs", "/redoc", "/openapi.json", f"{ASSETS_URL}/swagger-ui.css"):
            assert (await client.get(path)).status_code == 200, path
        page = (await client.get("/docs")).text
        assert f"{ASSETS_URL}/swagger-ui-bundle.js" in page and "cdn." not in page
        redoc = await client.get("/redoc")
        assert "cdn." not in redoc.text and f"{ASSETS_URL}/redoc.standalone.js" in redoc.text
        assert redoc.headers["content-security-policy"] == REDOC_CSP
        assert (await client.get("/swagger/index.html")).headers["location"] == "/docs"
        assert (await client.get(f"{ASSETS_URL}/no-such-file.js")).status_code == 404
