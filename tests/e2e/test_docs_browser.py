"""/api/docs and /api/redoc render in a real browser with every request outside the app refused.

Chromium (Playwright) against the embedded runtime: any request to another origin is aborted and
counted, and a CSP violation shows up as a console error, so a page that still needed a CDN, or
whose policy blocked its own viewer, fails here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Route

from tests.fixtures.app import RuntimeProcess

pytestmark = pytest.mark.slow
# ReDoc's "API docs by Redocly" badge links its logo from the vendor's CDN; the page's CSP blocks it
# (img-src 'self' data:) before any request leaves the browser. Nothing else may be blocked.
BLOCKED_BY_CSP = ("https://cdn.redoc.ly/redoc/logo-mini.svg",)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    rt = RuntimeProcess(tmp_path_factory.mktemp("docs"), {"LOG_LEVEL": "WARNING"}).start()
    try:
        yield rt
    finally:
        rt.stop()


@pytest.mark.parametrize(
    ("path", "rendered"),
    [("/api/docs", ".opblock-summary-path"), ("/api/redoc", "[data-section-id^='tag/']")],
)
def test_docs_render_offline_with_their_csp(
    live: RuntimeProcess, browser: Browser, artifacts: Path, path: str, rendered: str
) -> None:
    context = browser.new_context()
    outside: list[str] = []
    errors: list[str] = []

    def only_this_app(route: Route) -> None:
        if route.request.url.startswith(live.url) or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_this_app)
    page = context.new_page()

    def console(message: ConsoleMessage) -> None:
        expected = "Content Security Policy" in message.text and any(u in message.text for u in BLOCKED_BY_CSP)
        if message.type == "error" and not expected:
            errors.append(message.text)

    page.on("console", console)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(live.url + path)
    page.locator(rendered).first.wait_for(timeout=20_000)
    assert page.locator(rendered).count() > 10
    page.screenshot(path=str(artifacts / f"docs{path.replace('/', '-')}.png"))
    context.close()
    assert outside == [], f"requests outside the app: {outside}"
    assert errors == [], errors
