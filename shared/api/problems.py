"""RFC 9457 problem details: the one error shape of the API, rendered from `ServiceError`.

Every error a service raises carries its own status, kind and title (shared/errors.py); this
module only renders them, plus FastAPI's request validation and the router's own 404/405.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from shared.errors import InvalidRequest, ServiceError
from shared.text import encodable

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://agent-framework.dev/problems/"
log = logging.getLogger("agent.api")


class ProblemDetails(BaseModel):
    """RFC 9457 problem details: every error answer of the API has this shape."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="A URI naming the kind of problem, e.g. .../problems/not-found.")
    title: str = Field(description="A short summary of the kind of problem.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong with this request, and how to fix it.")
    instance: str | None = Field(None, description="The request path.")
    errors: list[dict[str, str]] | None = Field(
        None, description="422: each invalid field and why, as {field, message}."
    )


def _encodable(value: Any) -> Any:
    """Strings (and keys) escaped where UTF-8 cannot encode them: a problem echoing input must still render."""
    if isinstance(value, str):
        return encodable(value)
    if isinstance(value, dict):
        return {_encodable(k): _encodable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encodable(v) for v in value]
    return value


def problem_body(error: ServiceError, instance: str | None = None) -> dict[str, Any]:
    body = {
        "type": PROBLEM_BASE + error.kind,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        **({"instance": instance} if instance else {}),
        **error.extra,
    }
    return dict(_encodable(body))


def problem_response(error: ServiceError, instance: str | None = None) -> JSONResponse:
    return JSONResponse(
        problem_body(error, instance), status_code=error.status, media_type=PROBLEM_JSON, headers=error.headers
    )


class _RoutingError(ServiceError):
    """The router's own answers (unknown path, wrong method), in the same shape."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None) -> None:
        super().__init__(detail, headers=headers)
        self.status, self.kind = status, str(status)
        self.title = {404: "Not found", 405: "Method not allowed"}.get(status, "Error")


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or ".".join(str(p) for p in loc)


def validation_error(errors: Sequence[Any]) -> InvalidRequest:
    """An InvalidRequest listing pydantic's errors as {field, message}."""
    listed = [{"field": _field(tuple(e.get("loc", ()))), "message": e.get("msg", "")} for e in errors]
    return InvalidRequest("; ".join(f"{e['field']}: {e['message']}" for e in listed), errors=listed)


def allowed_methods(request: Request) -> list[str]:
    """The methods of the path the router matched: every route with its template, not only the first.

    The first route that matches the path names the resource (/api/admin/dlq/sweep, not
    /api/admin/dlq/{message_id}), as the OpenAPI document does.
    """
    routes = list(iter_route_contexts(request.app.routes))
    template = next((r.path_format for r in routes if r.matches(request.scope)[0] is not Match.NONE), None)
    return sorted({m for r in routes if r.path_format == template for m in (getattr(r, "methods", None) or ())})


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> JSONResponse:
        return problem_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(validation_error(list(exc.errors())), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        error = _RoutingError(exc.status_code, str(exc.detail), headers)
        return problem_response(error, request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", encodable(request.url.path))
        return problem_response(ServiceError("unexpected error; see the logs for this request"), request.url.path)
