"""The FastAPI app: served by Azure Functions through AsgiFunctionApp, by uvicorn locally."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.routing import Route

from shared.api import (
    docs,
    problems,
    routes_admin,
    routes_documents,
    routes_events,
    routes_health,
    routes_jobs,
    routes_metrics,
    routes_schedules,
    schema,
    security,
)
from shared.api.deps import BackendsSource
from shared.api.headers import AllowedHosts, SecurityHeaders
from shared.api.mcp_endpoint import MCP_PATH, McpEndpoint
from shared.api.problems import PROBLEM_JSON
from shared.api.security import ANONYMOUS, Access, Authentication, BodySizeLimit, Gate
from shared.console import KeyCheck, create_console
from shared.contracts import Document
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
        docs_url=None,  # served by docs.install, with assets from this app rather than a CDN
        redoc_url=None,
        # No "/x/" -> "/x" redirects: their Location would be built from the Host header.
        redirect_slashes=False,
        # RequestMetrics records requests and latency per route (agent.http.*); FastAPI's own request
        # metrics would record the same a second time, on every request.
        telemetry={"metrics": False},
    )
    api.state.backends = backends
    gate = Gate(settings, backends)
    api.state.gate = gate
    api.state.health_cache = health.HealthCache(settings.health_cache_seconds)
    problems.install(api)
    api.include_router(routes_jobs.router)
    api.include_router(routes_events.router)
    api.include_router(routes_schedules.router)
    # MCP (streamable HTTP) beside the REST routes: same app, same keys, same tenant scope.
    api.router.routes.append(Route(MCP_PATH, McpEndpoint(), methods=["GET", "POST", "DELETE"], include_in_schema=False))
    api.include_router(routes_documents.router)
    api.include_router(routes_metrics.router)
    api.include_router(routes_admin.router)
    api.include_router(routes_health.router)
    api.mount(
        "/console",
        create_console(backends, KeyCheck(gate.authenticate, security.require_operator, security.require_admin)),
    )
    # The console's home is /console/; a relative Location, never one built from the Host header.
    api.add_api_route("/console", lambda: RedirectResponse("/console/"), include_in_schema=False)
    docs.install(api)

    schema.document_problems(api, extra=_document_raw_routes)
    public = Access(ANONYMOUS, "public")
    security.declare_access(api, {api.openapi_url or "": public, MCP_PATH: MCP_ACCESS})
    api.add_middleware(Authentication)  # inside the size limit: a key is checked before any body is read
    api.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    api.add_middleware(AllowedHosts, allowed=settings.allowed_hosts)
    api.add_middleware(SecurityHeaders)  # outside the two above: their 400 and 413 carry the headers too
    api.add_middleware(metrics.RequestMetrics)  # outermost: a 413 is a request too
    return api


MCP_DOC = """Model Context Protocol, streamable HTTP transport (JSON-RPC 2.0 over POST; stateless, JSON responses).
Tools: submit_research, get_job, get_report, search_knowledge; resources: report://{job_id}. Authenticate
with the same API key as REST; the key's tenant scopes every call. See docs/mcp.md."""
MCP_ACCESS = Access("submitter", "own")


def _document_mcp(document: dict[str, Any]) -> None:
    """Put /api/mcp (a raw ASGI route, outside FastAPI's routing) into the OpenAPI document."""
    operation = {
        "tags": ["mcp"],
        "summary": "MCP server (streamable HTTP): tools and report resources",
        "description": MCP_DOC,
        "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": {
            "200": {"description": "JSON-RPC response", "content": {"application/json": {}}},
            "400": {
                "description": "A JSON-RPC error object, or (problem details) a Host outside ALLOWED_HOSTS",
                "content": {
                    "application/json": {},
                    PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}},
                },
            },
            "401": {"description": "No or invalid API key (problem details)"},
            "429": {"description": "Rate limited (problem details)"},
        },
        "security": [{"ApiKey": []}, {"Bearer": []}],
        "x-access": MCP_ACCESS.openapi(),
    }
    document["paths"][MCP_PATH] = {"post": {**operation, "operationId": "mcp_post"}}


def _document_upload(document: dict[str, Any]) -> None:
    """POST /api/documents reads its body itself (JSON, multipart or raw bytes): state what it accepts."""
    ref = {"$ref": "#/components/schemas/Document"}
    binary = {"schema": {"type": "string", "format": "binary"}}
    document["components"]["schemas"]["Document"] = Document.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    document["paths"]["/api/documents"]["post"]["requestBody"] = {
        "required": True,
        "content": {
            "application/json": {"schema": {"anyOf": [ref, {"type": "array", "items": ref}]}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                    "required": ["file"],
                }
            },
            "application/pdf": binary,
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document": binary,
            "application/octet-stream": binary,
        },
    }


def _document_raw_routes(document: dict[str, Any]) -> None:
    _document_mcp(document)
    _document_upload(document)
