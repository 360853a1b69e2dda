"""What the console receives from the app that mounts it: the backends and the API's own key check.

The console never checks a key itself: `create_api` hands it the API's authentication and its
`require_operator` and `require_admin` gates, so whatever the API decides about keys, roles and tenants
decides the console too, and the console stays below the API in the layers (it imports nothing of it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request

from shared.engine.backends import Backends

BackendsSource = Backends | Callable[[], Backends]


class Caller(Protocol):
    """Who a key belongs to, as the API's authentication describes it."""

    @property
    def tenant(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def key_id(self) -> str: ...


@dataclass(frozen=True)
class Operator:
    """Who signed in to the console: kept in the session cookie (never the key itself)."""

    tenant: str
    role: str
    key_id: str


@dataclass(frozen=True)
class KeyCheck:
    """The API's authentication: the caller a request's key stands for (raises when none), the
    gate of signing in (operator or admin) and the gate of platform-wide work (admin); each gate
    raises Forbidden when the role is not enough."""

    authenticate: Callable[[Request], Caller]
    # Any: the API's gates take its own Caller type; they are given the console's Operator, which has
    # the same fields (tenant, role, key_id), so a role check there applies here unchanged.
    require_operator: Callable[[Any], object]
    require_admin: Callable[[Any], object]


def backends(request: Request) -> Backends:
    source: BackendsSource = request.app.state.backends
    return source if isinstance(source, Backends) else source()


def key_check(request: Request) -> KeyCheck:
    check: KeyCheck = request.app.state.key_check
    return check


BackendsDep = Annotated[Backends, Depends(backends)]
