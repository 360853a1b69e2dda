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
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import InvalidRequest, ServiceError

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://agent-framework.dev/problems/"
log = logging.getLogger("agent.api")


def problem_body(error: ServiceError, instance: str | None = None) -> dict[str, Any]:
    return {
        "type": PROBLEM_BASE + error.kind,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        **({"instance": instance} if instance else {}),
        **error.extra,
    }


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


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> JSONResponse:
        return problem_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(validation_error(list(exc.errors())), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = _RoutingError(exc.status_code, str(exc.detail), getattr(exc, "headers", None))
        return problem_response(error, request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return problem_response(ServiceError("unexpected error; see the logs for this request"), request.url.path)
