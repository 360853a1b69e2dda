"""The FastAPI app: served by Azure Functions through AsgiFunctionApp, by uvicorn locally."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.routing import Route

from shared.api import (
    problems,
    routes_admin,
    routes_documents,
    routes_events,
    routes_jobs,
    routes_metrics,
    routes_schedules,
    security,
)
from shared.api.deps import BackendsDep, BackendsSource
from shared.api.mcp_server import MCP_PATH, McpEndpoint
from shared.api.security import ANONYMOUS, Access, AnonymousDep, Authentication, BodySizeLimit, Gate
from shared.console import KeyCheck, create_console
from shared.engine.backends import Backends
from shared.observability import metrics
from shared.services import health
from shared.settings import Settings

DESCRIPTION = """Submit research questions; an agent answers them step by step with a report whose
citations are verified against the documents it read. Authenticate with `X-API-Key` (or the key as
`Authorization: Bearer <key>`), or with an Entra ID access token where one is configured. Each
operation states the role and tenant scope it needs in `x-access` (submitter < operator < admin)."""


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
    gate = Gate(settings, backends)
    api.state.gate = gate
    problems.install(api)
    api.include_router(routes_jobs.router)
    api.include_router(routes_events.router)
    api.include_router(routes_schedules.router)
    # MCP (streamable HTTP) beside the REST routes: same app, same keys, same tenant scope.
    api.router.routes.append(Route(MCP_PATH, McpEndpoint(), methods=["GET", "POST", "DELETE"], include_in_schema=False))
    api.include_router(routes_documents.router)
    api.include_router(routes_metrics.router)
    api.include_router(routes_admin.router)
    api.mount(
        "/console",
        create_console(backends, KeyCheck(gate.authenticate, security.require_operator, security.require_admin)),
    )

    @api.get("/api/health", tags=["operations"], summary="Each dependency's state (anonymous)")
    def get_health(b: BackendsDep, _: AnonymousDep) -> JSONResponse:
        result = health.check(b)
        return JSONResponse(result, status_code=200 if result["status"] == "ok" else 503)

    _document_mcp(api)
    public = Access(ANONYMOUS, "public")
    docs = {path: public for path in (api.openapi_url, api.docs_url, api.swagger_ui_oauth2_redirect_url) if path}
    security.declare_access(api, {**docs, MCP_PATH: MCP_ACCESS})
    api.add_middleware(Authentication)  # inside the size limit: a key is checked before any body is read
    api.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    api.add_middleware(metrics.RequestMetrics)  # outermost: a 413 is a request too
    return api


MCP_DOC = """Model Context Protocol, streamable HTTP transport (JSON-RPC 2.0 over POST; stateless, JSON responses).
Tools: submit_research, get_job, get_report, search_knowledge; resources: report://{job_id}. Authenticate
with the same API key as REST; the key's tenant scopes every call. See docs/mcp.md."""
MCP_ACCESS = Access("submitter", "own")


def _document_mcp(api: FastAPI) -> None:
    """Put /api/mcp (a raw ASGI route, outside FastAPI's routing) into the OpenAPI document."""
    build = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = build()
            operation = {
                "tags": ["mcp"],
                "summary": "MCP server (streamable HTTP): tools and report resources",
                "description": MCP_DOC,
                "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {
                    "200": {"description": "JSON-RPC response", "content": {"application/json": {}}},
                    "401": {"description": "No or invalid API key (problem details)"},
                },
                "security": [{"ApiKey": []}, {"Bearer": []}],
                "x-access": MCP_ACCESS.openapi(),
            }
            schema["paths"][MCP_PATH] = {"post": {**operation, "operationId": "mcp_post"}}
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
