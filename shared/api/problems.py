"""RFC 9457 problem details: the one error shape of the API, raised from one place."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from agents.policy import PolicyViolation
from shared import jobs
from shared.composition import ConfigurationError
from shared.ports import DependencyUnavailable

PROBLEM_JSON = "application/problem+json"
_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
           409: "Conflict", 413: "Payload too large", 415: "Unsupported media type", 422: "Invalid request",
           429: "Too many requests", 500: "Internal error", 503: "Service unavailable"}


class Problem(Exception):
    def __init__(self, status: int, detail: str, *, kind: str | None = None, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.detail, self.kind, self.headers, self.extra = status, detail, kind, headers or {}, extra


def problem_response(status: int, detail: str, *, kind: str | None = None, instance: str | None = None,
                     headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = {"type": f"https://agent-framework.dev/problems/{kind or status}", "title": _TITLES.get(status, "Error"),
            "status": status, "detail": detail, **({"instance": instance} if instance else {}), **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or ".".join(str(p) for p in loc)


def install(app: FastAPI) -> None:
    def handler(status: int, kind: str):  # type: ignore[no-untyped-def]
        async def handle(request: Request, exc: Exception) -> JSONResponse:
            return problem_response(status, str(exc), kind=kind, instance=request.url.path)
        return handle

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.detail, kind=exc.kind, instance=request.url.path,
                                headers=exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": _field(tuple(e.get("loc", ()))), "message": e.get("msg", "")} for e in exc.errors()]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem_response(422, detail, kind="validation", instance=request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(exc.status_code, str(exc.detail), instance=request.url.path,
                                headers=getattr(exc, "headers", None))

    @app.exception_handler(PolicyViolation)
    async def _policy(request: Request, exc: PolicyViolation) -> JSONResponse:
        return problem_response(422, str(exc), kind="policy", instance=request.url.path,
                                errors=[{"field": f"policy.{exc.field}", "message": exc.why}])

    app.add_exception_handler(jobs.JobNotFound, handler(404, "not-found"))
    app.add_exception_handler(jobs.IdempotencyConflict, handler(409, "idempotency-conflict"))
    app.add_exception_handler(jobs.JobNotFinished, handler(409, "job-not-finished"))
    app.add_exception_handler(jobs.JobAlreadyFinished, handler(409, "job-finished"))
    app.add_exception_handler(jobs.BudgetExhausted, handler(429, "budget-exceeded"))
    app.add_exception_handler(DependencyUnavailable, handler(503, "dependency-unavailable"))
    app.add_exception_handler(ConfigurationError, handler(500, "configuration"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        import logging

        logging.getLogger("agent.api").exception("unhandled error on %s", request.url.path)
        return problem_response(500, "unexpected error; see the logs for this request", instance=request.url.path)
