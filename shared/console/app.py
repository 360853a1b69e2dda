"""The console app, mounted by the API at /console: routers, static assets, headers, error pages."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.console import (
    auth,
    automation,
    dead_letters,
    jobs,
    knowledge,
    maintenance,
    overview,
    pages,
    session,
    stuck_jobs,
    usage,
)
from shared.console.access import BackendsSource, KeyCheck
from shared.errors import InvalidRequest, ServiceError

log = logging.getLogger("agent.console")

# Scripts, styles, images and fetches from this app only; no inline script or style, no eval, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]


class SecurityHeaders:
    """The headers above on every console response; pages (not static assets) are never cached."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope.get("path", "").startswith("/console/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", [])) + HEADERS
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def create_console(backends: BackendsSource, key_check: KeyCheck) -> FastAPI:
    """The console over the same backends (or source of them) as the API, signing in by its key check."""
    console = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    console.state.backends = backends
    console.state.key_check = key_check
    console.mount("/static", StaticFiles(directory=pages.HERE / "static"), name="static")
    for module in (auth, overview, jobs, dead_letters, knowledge, usage, maintenance, automation, stuck_jobs):
        console.include_router(module.router)

    @console.exception_handler(session.NotSignedIn)
    async def _sign_in(request: Request, exc: session.NotSignedIn) -> Response:
        return pages.sign_in_redirect(request)

    @console.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> Response:
        return _error_page(request, exc)

    @console.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        fields = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors())
        return _error_page(request, InvalidRequest(fields))

    @console.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        error = ServiceError(str(exc.detail))
        error.status, error.title = exc.status_code, "Not found" if exc.status_code == 404 else "Error"
        return _error_page(request, error)

    @console.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return _error_page(request, ServiceError("unexpected error; see the logs for this request"))

    console.add_middleware(SecurityHeaders)
    return console


def _error_page(request: Request, error: ServiceError) -> Response:
    return pages.render(request, "error.html", session.read(request), status=error.status, error=error)
