"""What every response says about itself (security headers), and which Host names the app answers to.

SecurityHeaders adds the standard headers to every answer, unless the route set its own (the console
and the documentation pages bring their own Content-Security-Policy):

- X-Content-Type-Options: nosniff, Referrer-Policy: no-referrer, X-Frame-Options: DENY;
- a Content-Security-Policy that lets an API answer load nothing and be framed by no one;
- Cache-Control: no-store on API answers (keys, jobs and reports must not sit in a shared cache),
  not on static assets;
- Strict-Transport-Security when the request came over https (Azure; uvicorn on loopback is http).

AllowedHosts refuses (400, problem details) a Host header that is not one of ALLOWED_HOSTS. The app
builds no URL from the Host header (no trailing-slash redirects: redirect_slashes=False), so this is
defence in depth for whatever might one day; "*" turns it off.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.api.problems import problem_response
from shared.errors import ServiceError

__all__ = ["API_CSP", "AllowedHosts", "SecurityHeaders", "host_allowed"]

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
HSTS = "max-age=31536000; includeSubDomains"
_ALWAYS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", API_CSP.encode()),
]
# Files that never change between deploys of one version; caches may keep them.
STATIC_PREFIXES = ("/api/docs/assets/", "/console/static/")


class SecurityHeaders:
    """Adds the module's headers to each HTTP response that does not already carry them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = list(_ALWAYS)
        if not str(scope.get("path", "")).startswith(STATIC_PREFIXES):
            extra.append((b"cache-control", b"no-store"))
        if scope.get("scheme") == "https":
            extra.append((b"strict-transport-security", HSTS.encode()))

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                message["headers"] = headers + [(name, value) for name, value in extra if name not in present]
            await send(message)

        await self.app(scope, receive, with_headers)


class UnknownHost(ServiceError):
    kind = "unknown-host"
    status = 400
    title = "Bad request"
    fix = "call the app by one of its names (ALLOWED_HOSTS), or add this one to ALLOWED_HOSTS"


def _host_name(header: str) -> str:
    """The name part of a Host header: without the port; an IPv6 literal keeps its brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_allowed(header: str, allowed: Sequence[str]) -> bool:
    """Whether a Host header names one of `allowed`: exact names, "*.suffix" for subdomains, or "*"."""
    name = _host_name(header)
    for pattern in allowed:
        pattern = pattern.strip().lower()
        if pattern == "*" or pattern == name:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]) and len(name) > len(pattern) - 1:
            return True
    return False


class AllowedHosts:
    """400 for a request whose Host header is missing or not in the allowed list."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str]) -> None:
        self.app = app
        self.allowed = list(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or "*" in self.allowed:
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope.get("headers") or [] if k == b"host"), "")
        if host_allowed(host, self.allowed):
            await self.app(scope, receive, send)
            return
        error = UnknownHost("the Host header names no host this app serves (ALLOWED_HOSTS)")
        await problem_response(error, str(scope.get("path", "")))(scope, receive, send)
