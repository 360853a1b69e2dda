"""GET /api/health: up or down for anyone; each dependency's state for operators.

Anonymous callers (load balancers, uptime monitors, anyone on the internet) learn only
{"status": "ok"|"down"}: no dependency names, versions, counts or errors to map the deployment
with, and their answer comes from a check at most HEALTH_CACHE_SECONDS old (see
shared/services/health.py), so probing cannot make the app write blobs or call the model at the
caller's pace. A caller with an operator (or admin) key gets the full report from a check still
running when it asked (shared by the operators asking meanwhile) or started after.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from shared.api import security
from shared.api.deps import BackendsDep
from shared.errors import ServiceError
from shared.services import health

router = APIRouter(prefix="/api", tags=["operations"])
DETAIL_ROLES = frozenset({"operator", "admin"})


class DependencyState(BaseModel):
    status: Literal["up", "down"]
    ms: float = Field(description="How long the check took.")
    detail: Any = Field(None, description="What was checked, or the dependency's figures.")
    error: str | None = Field(None, description="Why it is down.")


class HealthReport(BaseModel):
    """Anonymous: only `status` ("ok" or "down"). Operators: "ok" or "degraded", with every dependency."""

    status: Literal["ok", "down", "degraded"]
    dependencies: dict[str, DependencyState] | None = Field(None, description="Operators only.")
    workers: dict[str, dict[str, Any]] | None = Field(None, description="Operators only: the embedded worker pools.")


async def _operator(request: Request) -> bool:
    """Whether the request carries a valid operator or admin key; anything else is an anonymous probe."""
    if not (request.headers.get("x-api-key") or request.headers.get("authorization")):
        return False
    try:
        caller = await security.authenticate(request)
    except ServiceError:
        return False  # a wrong, throttled or unusable key: answered as anonymous, not refused
    return caller.role in DETAIL_ROLES


@router.get(
    "/health",
    response_model=HealthReport,
    summary="Up or down (anonymous); each dependency's state (operator key)",
    responses={503: {"model": HealthReport, "description": "A dependency (or worker pool) is down"}},
)
async def get_health(request: Request, b: BackendsDep, _: security.AnonymousDep) -> JSONResponse:
    # Async: a cached or shared answer costs no thread; only the caller that starts a check hands it
    # to a worker thread, and everyone who shares it waits on the event loop.
    cache: health.HealthCache = request.app.state.health_cache
    operator = await _operator(request)
    result = await cache.get_async(b, fresh=operator)
    ok = result["status"] == "ok"
    body = result if operator else {"status": "ok" if ok else "down"}
    return JSONResponse(body, status_code=200 if ok else 503)
