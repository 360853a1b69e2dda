"""/api/docs (Swagger UI) and /api/redoc (ReDoc), with their scripts and styles served by this app.

FastAPI's own pages load Swagger UI and ReDoc from a public CDN: blank offline, on a private network,
or under a CSP that allows only this origin. The assets come from the `fastapi-offline` wheel (pinned
in requirements.txt; a copy of swagger-ui-dist 5 and redoc 2 with their licences), mounted at
/api/docs/assets; the pages are FastAPI's own HTML pointed at them. Each page carries a CSP allowing
scripts from this origin plus the hash of its one inline script (the Swagger UI bootstrap); styles
may be inline, because both viewers insert their styles at run time.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

from shared.api.security import AnonymousDep

__all__ = ["ASSETS_PATH", "DOCS_PATH", "REDOC_PATH", "install"]

DOCS_PATH = "/api/docs"
REDOC_PATH = "/api/redoc"
ASSETS_PATH = "/api/docs/assets"
ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def _page_csp(html: str) -> str:
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
        for body in _INLINE_SCRIPT.findall(html)
    )
    return (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ).replace("'self' ;", "'self';")


def _page(rendered: HTMLResponse) -> tuple[str, str]:
    html = bytes(rendered.body).decode()
    return html, _page_csp(html)


def install(api: FastAPI) -> None:
    """Serve the two documentation pages and their assets (create the app with docs_url=redoc_url=None)."""
    title = api.title
    openapi_url = api.openapi_url or "/api/openapi.json"
    swagger_html, swagger_csp = _page(
        get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
            swagger_ui_parameters=api.swagger_ui_parameters,
        )
    )
    redoc_html, redoc_csp = _page(
        get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )
    )
    api.mount(ASSETS_PATH, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    @api.get(DOCS_PATH, include_in_schema=False)
    def swagger_ui(_: AnonymousDep) -> HTMLResponse:
        return HTMLResponse(swagger_html, headers={"Content-Security-Policy": swagger_csp})

    @api.get(REDOC_PATH, include_in_schema=False)
    def redoc_page(_: AnonymousDep) -> HTMLResponse:
        return HTMLResponse(redoc_html, headers={"Content-Security-Policy": redoc_csp})
