"""The FastAPI app: served by Azure Functions through AsgiFunctionApp, by uvicorn locally."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from shared.api import (
    problems,
    routes_admin,
    routes_documents,
    routes_events,
    routes_jobs,
    routes_metrics,
    routes_schedules,
)
from shared.api.deps import BackendsDep, BackendsSource
from shared.api.security import BodySizeLimit
from shared.engine.backends import Backends
from shared.observability import metrics
from shared.services import health
from shared.settings import Settings

DESCRIPTION = """Submit research questions; an agent answers them step by step with a report whose
citations are verified against the documents it read. Authenticate with `X-API-Key` or
`Authorization: Bearer <key>`."""


def create_api(backends: BackendsSource, settings: Settings | None = None) -> FastAPI:
    """The API over these backends (or a zero-argument source of them, called on first use).

    `settings` is needed when `backends` is a source, for what the app fixes when it is built.
    """
    if settings is None:
        if not isinstance(backends, Backends):
            raise TypeError("create_api(source) needs settings= as well")
        settings = backends.settings
    api = FastAPI(
        title="agent-framework",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    api.state.backends = backends
    problems.install(api)
    api.include_router(routes_jobs.router)
    api.include_router(routes_events.router)
    api.include_router(routes_schedules.router)
    api.include_router(routes_documents.router)
    api.include_router(routes_metrics.router)
    api.include_router(routes_admin.router)

    @api.get("/api/health", tags=["operations"], summary="Each dependency's state (anonymous)")
    def get_health(b: BackendsDep) -> JSONResponse:
        result = health.check(b)
        return JSONResponse(result, status_code=200 if result["status"] == "ok" else 503)

    api.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    api.add_middleware(metrics.RequestMetrics)  # outermost: a 413 is a request too
    return api
