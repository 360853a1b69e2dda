"""Who is calling (API keys mapped to tenants), how fast, and with how big a body."""

from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.api.deps import backends
from shared.api.problems import problem_response
from shared.errors import Forbidden, PayloadTooLarge, TooManyRequests, Unauthorized


@dataclass(frozen=True)
class Caller:
    tenant: str
    role: str
    key_id: str  # a short fingerprint for logs; never the key itself


def _presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class RateLimiter:
    """A token bucket per API key: rate_per_minute sustained, the same as burst."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, rate_per_minute: int) -> float:
        """0 when allowed, else seconds until the next request would be."""
        now = time.monotonic()
        per_second = rate_per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get(key, (float(rate_per_minute), now))
            tokens = min(float(rate_per_minute), tokens + (now - last) * per_second)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / per_second


limiter = RateLimiter()


def authenticate(request: Request) -> Caller:
    settings = backends(request).settings
    presented = _presented_key(request)
    if not presented:
        raise Unauthorized("send an API key in X-API-Key or Authorization: Bearer")
    for key, entry in settings.api_keys.items():
        if hmac.compare_digest(key.encode(), presented.encode()):
            caller = Caller(tenant=entry.tenant, role=entry.role, key_id=f"{entry.tenant}:{key[:4]}…")
            break
    else:
        raise Unauthorized("the API key is not valid")
    wait = limiter.allow(key, settings.rate_limit_per_minute)
    if wait:
        raise TooManyRequests(
            f"rate limit of {settings.rate_limit_per_minute} requests per minute exceeded",
            headers={"Retry-After": str(max(1, round(wait)))},
        )
    return caller


def require_operator(caller: Annotated[Caller, Depends(authenticate)]) -> Caller:
    if caller.role != "operator":
        raise Forbidden("this operation needs an operator key")
    return caller


CallerDep = Annotated[Caller, Depends(authenticate)]
OperatorDep = Annotated[Caller, Depends(require_operator)]


class BodySizeLimit:
    """Refuse bodies over max_bytes with 413 before any handler reads them (chunked bodies too)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            PayloadTooLarge(f"request body is larger than {self.max_bytes} bytes"), scope.get("path")
        )
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass
