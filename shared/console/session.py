"""Console sessions: an operator key exchanged once for a signed, HttpOnly, SameSite=Strict cookie.

The key itself is checked by the API's own authentication and `require_operator` (handed
over as `access.KeyCheck`), so whatever they decide about keys and roles decides the console too; the cookie keeps
only who signed in (tenant, role, key fingerprint), a CSRF token and the sign-in time. Every
state-changing form carries the session's CSRF token; a request without a valid one is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from shared.console.access import Operator, backends, key_check
from shared.errors import ConfigurationError, ServiceError
from shared.settings import DEV_API_KEY, Settings

log = logging.getLogger("agent.console")

COOKIE = "console_session"
PATH = "/console"
_process_secret = secrets.token_urlsafe(32)  # development only: sessions end when the process does


class NotSignedIn(ServiceError):
    kind = "console-sign-in"
    status = 401
    title = "Sign in"


class CsrfRejected(ServiceError):
    kind = "console-csrf"
    status = 403
    title = "Form rejected"


@dataclass(frozen=True)
class Session:
    csrf: str
    caller: Operator | None = None

    @property
    def signed_in(self) -> bool:
        return self.caller is not None


def signing_secret(settings: Settings) -> str | bytes:
    """CONSOLE_SESSION_SECRET; else a key derived from the configured API keys; else (development) per process.

    Every instance of a deployment shares its API keys, so the derived key signs alike everywhere and
    survives restarts and deployments; rotating the keys ends every console session. Only someone who
    holds every key could derive it, and such a holder can sign in as anyone already.
    """
    if settings.console_session_secret:
        return settings.console_session_secret
    keys = {k: v.model_dump() for k, v in settings.api_keys.items()}
    if set(keys) != {DEV_API_KEY}:
        canonical = json.dumps(keys, sort_keys=True).encode()
        return hmac.new(b"agent-console-session", canonical, hashlib.sha256).digest()
    if settings.app_env == "production":
        raise ConfigurationError(
            "the console needs CONSOLE_SESSION_SECRET or API_KEYS of your own; set them in app settings"
        )
    return _process_secret


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(signing_secret(settings), salt="agent-console-session")


def read(request: Request) -> Session | None:
    """The request's session, or None when there is none or it is forged, expired or malformed."""
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    settings = backends(request).settings
    try:
        data: dict[str, Any] = _serializer(settings).loads(raw, max_age=settings.console_session_minutes * 60)
    except BadSignature:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("c"), str):
        return None
    who = data.get("u")
    caller = None
    if isinstance(who, dict):
        caller = Operator(tenant=str(who["t"]), role=str(who["r"]), key_id=str(who["k"]))
    return Session(csrf=data["c"], caller=caller)


def new_session(caller: Operator | None = None) -> Session:
    return Session(csrf=secrets.token_urlsafe(24), caller=caller)


def write(response: Response, request: Request, session: Session) -> None:
    """Set the session cookie: HttpOnly, SameSite=Strict, Path=/console, Secure over HTTPS or in production."""
    settings = backends(request).settings
    payload: dict[str, Any] = {"c": session.csrf}
    if session.caller is not None:
        payload["u"] = {"t": session.caller.tenant, "r": session.caller.role, "k": session.caller.key_id}
    response.set_cookie(
        COOKIE,
        _serializer(settings).dumps(payload),
        max_age=settings.console_session_minutes * 60,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https" or settings.app_env == "production",
    )


def clear(response: Response) -> None:
    response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict")


def check_csrf(session: Session | None, presented: str | None) -> None:
    if session is None or not presented or not hmac.compare_digest(session.csrf.encode(), presented.encode()):
        raise CsrfRejected("the form's CSRF token does not match this session")


def sign_in(request: Request, key: str) -> Operator:
    """Who this operator key stands for, by the API's own authentication.

    Raises what that raises: Unauthorized (bad key), TooManyRequests (rate limit), Forbidden (not an operator).
    """
    try:
        header = key.strip().encode("latin-1")
    except UnicodeEncodeError:
        header = b""
    check = key_check(request)
    caller = check.authenticate(Request({**request.scope, "headers": [(b"x-api-key", header)] if header else []}))
    check.require_operator(caller)
    log.info(
        "console sign-in: tenant %s, role %s (%s)",
        caller.tenant,
        caller.role,
        caller.key_id,
        extra={"event": "console_sign_in", "tenant": caller.tenant},
    )
    return Operator(tenant=caller.tenant, role=caller.role, key_id=caller.key_id)
