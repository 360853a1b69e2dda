"""The OpenAPI document states every error the API really answers with, as problem details.

FastAPI documents only what a route returns and its 422 (as `HTTPValidationError`, which this API
never sends). This module rewrites the document once, in one place, from what each route is:

- every operation: 400 (a Host header outside ALLOWED_HOSTS) and 503 (a dependency is down);
- an operation that needs a key: 401 and 429; one whose dependencies check a role too: 403;
- a path with parameters: 404; a body: 413 (MAX_BODY_BYTES); parameters or a body: 422;
- whatever a route adds itself with `responses=problem_responses(409, 415, ...)`.

Each of these answers `application/problem+json` with the `ProblemDetails` schema. A route that
documents its own body for an error status (the health check's 503) keeps it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from shared.api import security
from shared.api.problems import PROBLEM_JSON, ProblemDetails

__all__ = ["STATUS_DESCRIPTIONS", "document_problems", "problem_responses"]

STATUS_DESCRIPTIONS = {
    400: "Bad request: the Host header is not one of ALLOWED_HOSTS",
    401: "No API key, or not a valid one",
    403: "The key's role or tenant does not allow this operation",
    404: "Not found (or not the caller's)",
    409: "Conflict with the resource's current state",
    413: "The body is larger than MAX_BODY_BYTES",
    415: "The body's content type is not one this operation reads",
    422: "Invalid request: `errors` lists each field and why",
    429: "Rate limited: retry after the seconds Retry-After names",
    503: "A dependency is unavailable: retry after the seconds Retry-After names",
}
_PROBLEM_REF = {"$ref": "#/components/schemas/ProblemDetails"}
_FASTAPI_VALIDATION = "#/components/schemas/HTTPValidationError"


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route decorator: statuses this route answers beyond the ones its shape implies."""
    return {status: {"description": STATUS_DESCRIPTIONS[status]} for status in statuses}


def _calls(dependant: Dependant) -> Iterator[tuple[Callable[..., Any] | None, Dependant]]:
    for sub in dependant.dependencies:
        yield sub.call, sub
        yield from _calls(sub)


def _implied_statuses(route: Any) -> set[int]:
    """The statuses a route's shape implies (an APIRoute, or FastAPI's context of an included one)."""
    statuses = {400, 503}
    calls = list(_calls(route.dependant))
    if any(call is security.authenticate for call, _ in calls):
        statuses |= {401, 429}
        # A dependency that itself depends on authenticate checks what the caller may do: a role.
        if any(
            call is not security.authenticate and any(c is security.authenticate for c, _ in _calls(sub))
            for call, sub in calls
        ):
            statuses.add(403)
    if route.dependant.path_params:
        statuses.add(404)
    if route.body_field is not None or route.methods & {"POST", "PUT", "PATCH"}:
        statuses.add(413)
    if route.body_field is not None or route.dependant.query_params or route.dependant.path_params:
        statuses.add(422)
    if route.dependant.header_params or route.dependant.cookie_params:
        statuses.add(422)
    return statuses


def _is_fastapi_validation(response: dict[str, Any]) -> bool:
    content = response.get("content", {})
    return any(m.get("schema", {}).get("$ref") == _FASTAPI_VALIDATION for m in content.values())


def _document_operation(operation: dict[str, Any], implied: set[int]) -> None:
    responses = operation.setdefault("responses", {})
    for status in implied:
        responses.setdefault(str(status), {"description": STATUS_DESCRIPTIONS[status]})
    for code, response in responses.items():
        if not code.isdigit() or int(code) < 400:
            continue
        if _is_fastapi_validation(response):
            response["description"] = STATUS_DESCRIPTIONS[422]
            response["content"] = {}
        if not response.get("content"):
            response["description"] = response.get("description") or STATUS_DESCRIPTIONS.get(int(code), "Error")
            response["content"] = {PROBLEM_JSON: {"schema": _PROBLEM_REF}}


def _problem_schema(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ProblemDetails"] = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
    text = json.dumps(schema["paths"])
    for unused in ("HTTPValidationError", "ValidationError"):
        if f'"#/components/schemas/{unused}"' not in text:
            components.pop(unused, None)


def document_problems(api: FastAPI, extra: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Wrap api.openapi so the document it serves lists every error answer (see the module docstring).

    `extra` edits the schema first (documenting routes FastAPI does not see, e.g. the MCP endpoint).
    """
    build = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = build()
            if extra is not None:
                extra(schema)
            routes = {
                (r.path_format, m.lower()): r
                for r in iter_route_contexts(api.routes)
                if isinstance(r.original_route, APIRoute)
                for m in r.methods or ()
            }
            for path, operations in schema["paths"].items():
                for method, operation in operations.items():
                    route = routes.get((path, method))
                    implied = _implied_statuses(route) if route else {400, 503}
                    if operation.get("security"):  # a security scheme says a key is needed, however checked
                        implied |= {401, 429}
                    _document_operation(operation, implied)
            _problem_schema(schema)
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
