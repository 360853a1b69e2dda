"""Who is calling, what each route lets them do, and how often.

Roles: submitter < operator < admin. A submitter or operator acts only in its own tenant; an admin
acts across tenants and on platform-wide things (restore, dead-letter purge, keys). Every route
states its access in one place, its caller parameter (`SubmitterDep`, `OperatorDep`, `AdminDep`,
`TenantOperatorDep`) or `AnonymousDep`; `declare_access` copies that declaration into the OpenAPI
document (`x-access`) and into the map the `Authentication` middleware reads. The middleware
authenticates before anything reads the body, so a request without a valid key gets 401 (or 429),
never a validation error; the route's dependency then checks the role on the Caller it left.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request, routing
from fastapi.encoders import jsonable_encoder
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.api.deps import BackendsSource
from shared.api.limiting import Limits, NeedsStorage
from shared.api.problems import problem_response
from shared.api.tokens import InvalidToken, TokenVerifier, looks_like_jwt
from shared.engine.backends import Backends
from shared.errors import Forbidden, PayloadTooLarge, ServiceError, Unauthorized
from shared.services import keys
from shared.settings import Settings

__all__ = [
    "ANONYMOUS",
    "ROLES",
    "Access",
    "AdminDep",
    "AnonymousDep",
    "Authentication",
    "BodySizeLimit",
    "Caller",
    "CallerDep",
    "Gate",
    "OperatorDep",
    "SubmitterDep",
    "TenantOperatorDep",
    "access",
    "authenticate",
    "authenticate_now",
    "declare_access",
    "may_act_for",
    "require_admin",
    "require_operator",
    "role_at_least",
    "tenant_filter",
]

log = logging.getLogger("agent.security")

ROLES = ("submitter", "operator", "admin")
ANONYMOUS = "anonymous"
AccessScope = Literal["public", "own", "tenant", "platform"]
SCOPES: dict[str, str] = {
    "public": "anyone, without a key",
    "own": "the caller's own tenant, always (another tenant's ids do not exist for it)",
    "tenant": "the caller's own tenant; an admin may name any tenant",
    "platform": "every tenant at once, or the platform itself",
}


@dataclass(frozen=True)
class Caller:
    tenant: str
    role: str
    key_id: str  # an id or fingerprint for logs and limits; never the key itself

    def at_least(self, role: str) -> bool:
        return role_at_least(self.role, role)


def role_at_least(held: str, needed: str) -> bool:
    return held in ROLES and ROLES.index(held) >= ROLES.index(needed)


def may_act_for(caller: Caller, tenant: str | None) -> bool:
    """Whether this caller may act on this tenant's things: its own, or any for an admin."""
    return caller.role == "admin" or (tenant is not None and caller.tenant == tenant)


def tenant_filter(caller: Caller, tenant: str | None) -> str | None:
    """The tenant a listing is limited to: an admin's choice (None: every tenant), else the caller's own."""
    return tenant if caller.role == "admin" else caller.tenant


class RoleRequired(Forbidden):
    kind = "role-required"
    fix = "use a key whose role allows this operation (submitter < operator < admin)"


class TenantOutOfScope(Forbidden):
    kind = "tenant-out-of-scope"
    fix = "an operator acts in its own tenant only; leave out ?tenant= or use an admin key"


@dataclass(frozen=True)
class Access:
    """What a route needs: a role (or anonymous) and the tenants it reaches."""

    role: str
    scope: AccessScope

    def openapi(self) -> dict[str, str]:
        return {"role": self.role, "scope": self.scope, "meaning": SCOPES[self.scope]}


UNDECLARED = Access("admin", "platform")  # deny by default: a route nobody declared is for admins only

api_key_scheme = APIKeyHeader(
    name="X-API-Key", scheme_name="ApiKey", auto_error=False, description="An API key (afk_<id>_<secret>)."
)
bearer_scheme = HTTPBearer(
    scheme_name="Bearer", auto_error=False, description="An Entra ID access token, or an API key as the bearer."
)


def access(role: str, scope: AccessScope) -> Callable[..., Awaitable[Caller | None]]:
    """The dependency that declares and enforces a route's access (its `__access__` is the declaration)."""
    declared = Access(role, scope)
    # Every dependency here is async: they only read what the middleware left, and a sync one would
    # cost a hop to the thread pool (and back) on every request.
    if role == ANONYMOUS:

        async def anonymous() -> None:
            return None

        anonymous.__access__ = declared  # type: ignore[attr-defined]
        return anonymous
    if role not in ROLES:
        raise ValueError(f"unknown role {role}")

    async def need(
        request: Request,
        # The caller the middleware authenticated; a dependency (not a call) so that what reads the
        # route's dependencies, such as the OpenAPI's error statuses, sees that a key is needed.
        caller: Annotated[Caller, Depends(authenticate)],
    ) -> Caller:
        # The security schemes are not parameters here: as dependencies they would be resolved on every
        # request only to be ignored. declare_access puts them into the OpenAPI document instead.
        if not caller.at_least(role):
            raise RoleRequired(f"this operation needs the {role} role; this key is {caller.role}")
        if scope == "tenant" and "tenant" in request.query_params:
            named = request.query_params["tenant"]
            if not may_act_for(caller, named):
                raise TenantOutOfScope(f"a {caller.role} of {caller.tenant} cannot act for tenant {named}")
        return caller

    need.__access__ = declared  # type: ignore[attr-defined]
    return need


AnonymousDep = Annotated[None, Depends(access(ANONYMOUS, "public"))]
SubmitterDep = Annotated[Caller, Depends(access("submitter", "own"))]
TenantOperatorDep = Annotated[Caller, Depends(access("operator", "tenant"))]
AdminDep = Annotated[Caller, Depends(access("admin", "platform"))]
CallerDep = SubmitterDep  # the tenant API: any key, the key's own tenant
OperatorDep = TenantOperatorDep


# --- authentication ------------------------------------------------------------------------------------


def _presented(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _address(request: Request) -> str | None:
    """The client's address, or None when the server does not say (the Functions ASGI adapter passes none).

    Without an address there is nothing to throttle per address: one shared "unknown" counter would let
    twenty wrong keys from anyone lock every caller out. There the gateway's per-address limit holds
    (API Management, docs/security.md), and the per-key and per-tenant limits still apply.
    """
    return request.client.host if request.client and request.client.host else None


class Gate:
    """Authentication of one app: configured keys, stored keys, Entra ID tokens; and the limits."""

    def __init__(self, settings: Settings, backends: BackendsSource) -> None:
        self.settings = settings
        self.limits = Limits.from_settings(settings)
        self.tokens = TokenVerifier(settings) if TokenVerifier.configured(settings) else None
        self._backends = backends
        # Configured keys by their sha256: one dict lookup, and the compare runs on digests of equal length.
        self._configured = {
            hashlib.sha256(key.encode()).hexdigest(): (key, entry) for key, entry in settings.api_keys.items()
        }

    def backends(self) -> Backends:
        return self._backends if isinstance(self._backends, Backends) else self._backends()

    def authenticate(self, request: Request, *, quick: bool = False) -> Caller:
        """The caller this request's credentials stand for; Unauthorized or TooManyRequests otherwise.

        quick=True (the middleware, on the event loop) answers only from memory: a configured key or a
        cached stored key, counted in this process's limit blocks. Where that is not enough (a key not
        cached, a token, a block used up, a failure to count) it raises NeedsStorage having changed
        nothing, and the full check runs in the thread pool.
        """
        address = _address(request)
        if address is not None:
            self.limits.check_address(address, quick=quick)
        presented = _presented(request)
        if not presented:
            raise Unauthorized("send an API key in X-API-Key, or a token in Authorization: Bearer")
        caller = self._resolve(presented, quick=quick)
        if caller is None:
            if quick:
                raise NeedsStorage  # a failure is counted in the shared store, by the full check
            if address is not None:
                self.limits.failed(address)
            log.warning(
                "failed authentication from %s", address or "an unknown address", extra={"event": "auth_failed"}
            )
            raise Unauthorized("the API key or token is not valid")
        self.limits.admit(caller.tenant, caller.key_id, quick=quick)
        return caller

    def _resolve(self, presented: str, *, quick: bool = False) -> Caller | None:
        if self.tokens is not None and looks_like_jwt(presented):
            if quick:
                raise NeedsStorage  # the signing keys may have to be fetched
            try:
                claims = self.tokens.verify(presented)
            except InvalidToken as exc:
                log.warning("bearer token refused: %s", exc, extra={"event": "token_refused"})
                return None
            return Caller(tenant=claims.tenant, role=claims.role, key_id=f"entra:{claims.subject}")
        # A dict lookup by digest: the time it takes says nothing of the key (its sha256 is unguessable).
        configured = self._configured.get(hashlib.sha256(presented.encode()).hexdigest())
        if configured is not None:
            key, entry = configured
            return Caller(tenant=entry.tenant, role=entry.role, key_id=f"{entry.tenant}:{key[:4]}…")
        if keys.key_id_of(presented) is not None:
            record = (
                keys.verify_cached(self.backends(), presented) if quick else keys.verify(self.backends(), presented)
            )
            if record is False:
                raise NeedsStorage
            if record is not None:
                return Caller(tenant=record.tenant, role=record.role, key_id=record.id)
        return None


async def authenticate(request: Request) -> Caller:
    """The request's caller: the one the middleware authenticated, else authenticated now.

    Now means from memory on the event loop where that is enough, else in the thread pool (as the
    middleware does).
    """
    found = request.scope.get("state", {}).get("caller")
    if isinstance(found, Caller):
        return found
    return await _authenticate_on_loop(request.app.state.gate, request)


async def _authenticate_on_loop(gate: Gate, request: Request) -> Caller:
    try:
        return gate.authenticate(request, quick=True)  # from memory, on the loop: no thread hop
    except NeedsStorage:
        return await run_in_threadpool(gate.authenticate, request)


def authenticate_now(request: Request) -> Caller:
    """authenticate() for sync code (a route running in the thread pool): the middleware's caller, else checked now."""
    found = request.scope.get("state", {}).get("caller")
    if isinstance(found, Caller):
        return found
    gate: Gate = request.app.state.gate
    return gate.authenticate(request)


def require_operator(caller: Any) -> Any:
    """Operator or admin (the console's sign-in); any caller with a `role` (the console's Operator too)."""
    if not role_at_least(caller.role, "operator"):
        raise RoleRequired("this operation needs an operator key")
    return caller


def require_admin(caller: Any) -> Any:
    """Admin only (platform-wide actions, in the API and the console alike)."""
    if not role_at_least(caller.role, "admin"):
        raise RoleRequired("this operation acts on every tenant and needs an admin key")
    return caller


# --- the route map and the middleware --------------------------------------------------------------------


def declared_access(dependant: Any) -> Access | None:
    """The access a route's own dependencies declare, or None."""
    for dependency in getattr(dependant, "dependencies", None) or []:
        found = getattr(dependency.call, "__access__", None)
        if isinstance(found, Access):
            return found
    return None


@dataclass(frozen=True)
class DeclaredRoute:
    path: str
    methods: frozenset[str]
    pattern: re.Pattern[str]
    access: Access | None  # None: nobody declared it (the matrix test fails; the middleware asks for admin)
    in_schema: bool


def declare_access(api: FastAPI, extra: dict[str, Access]) -> list[DeclaredRoute]:
    """Every route of the app with its declared access, in routing order, for the middleware and OpenAPI.

    `extra` declares the routes that are not FastAPI operations (docs, openapi.json, MCP) by path.
    Call it once every route is in place; `x-access` is then added to each operation of the OpenAPI.
    """
    table = []
    for context in routing.iter_route_contexts(api.routes):
        pattern, path = getattr(context, "path_regex", None), context.path
        if pattern is None or path is None or not context.methods:
            continue  # mounts (the console) route by their own rules, outside /api
        is_operation = isinstance(context.original_route, APIRoute)
        found = declared_access(context.dependant) if is_operation else extra.get(path)
        table.append(
            DeclaredRoute(
                path,
                frozenset(context.methods),
                pattern,
                found,
                is_operation and bool(getattr(context, "include_in_schema", True)),
            )
        )
    api.state.access = table
    build = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = build()
            for route in table:
                for method in route.methods:
                    operations = schema["paths"].get(route.path, {})
                    operation = operations.get(method.lower())
                    if operation is None or route.access is None:
                        continue
                    if route.access.role != ANONYMOUS and "security" not in operation:
                        as_built = any("parameters" in other for other in operations.values())
                        operation = operations[method.lower()] = _with_security(operation, as_built)
                        _document_schemes(schema)
                    operation["x-access"] = route.access.openapi()
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
    return table


SECURITY_SCHEMES = (api_key_scheme, bearer_scheme)
_METADATA = ("tags", "summary", "description", "operationId", "deprecated")
_MODEL_ORDER: tuple[str, ...] = ("tags", "summary", "description", "externalDocs", "operationId")
_MODEL_ORDER += ("parameters", "requestBody", "responses", "callbacks", "deprecated")


def _with_security(operation: dict[str, Any], as_built: bool) -> dict[str, Any]:
    """The operation with the key schemes as its security, where FastAPI would have put them.

    Only the order of keys depends on it, so that the document stays byte for byte what it was when the
    schemes were dependencies: FastAPI adds `security` right after the metadata, and its path items come
    out in that order (as_built) or re-ordered by its OpenAPI model, which puts `security` after the
    responses. Which one a path gets follows from whether any of its operations has parameters.
    """
    before = _METADATA if as_built else _MODEL_ORDER
    documented = {key: operation[key] for key in before if key in operation}
    documented["security"] = [{scheme.scheme_name: []} for scheme in SECURITY_SCHEMES]
    documented.update((key, value) for key, value in operation.items() if key not in documented)
    return documented


def _document_schemes(schema: dict[str, Any]) -> None:
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    for scheme in SECURITY_SCHEMES:
        schemes[scheme.scheme_name] = jsonable_encoder(scheme.model, by_alias=True, exclude_none=True)


def route_access(table: list[DeclaredRoute], method: str, path: str) -> DeclaredRoute | None:
    """The route this request reaches, as the router would pick it; None when none (a 404/405 follows)."""
    for route in table:
        if (method in route.methods or (method == "HEAD" and "GET" in route.methods)) and route.pattern.match(path):
            return route
    return None


class Authentication:
    """Authenticate every non-anonymous /api request before its body is read; the Caller goes in the state."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api"):
            await self.app(scope, receive, send)
            return
        api = scope["app"]
        route = route_access(api.state.access, scope["method"], scope["path"])
        found = (route.access or UNDECLARED) if route is not None else None
        if found is not None and found.role != ANONYMOUS:
            request = Request(scope)
            gate: Gate = api.state.gate
            try:
                caller = await _authenticate_on_loop(gate, request)
                if route is not None and route.access is None:
                    require_admin(caller)
            except ServiceError as error:
                await problem_response(error, scope.get("path"))(scope, receive, send)
                return
            scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)


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
