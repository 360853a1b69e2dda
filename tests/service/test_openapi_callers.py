"""The OpenAPI document names every route of progress events, approvals, schedules and MCP."""

from __future__ import annotations

import inspect

from fastapi.testclient import TestClient


def test_every_new_route_is_documented(api: TestClient) -> None:
    paths = api.get("/api/openapi.json").json()["paths"]
    expected = {
        "/api/jobs/{job_id}/events": {"get"},
        "/api/jobs/{job_id}/approve": {"post"},
        "/api/jobs/{job_id}/reject": {"post"},
        "/api/schedules": {"get", "post"},
        "/api/schedules/{schedule_id}": {"get", "delete"},
        "/api/schedules/{schedule_id}/pause": {"post"},
        "/api/schedules/{schedule_id}/resume": {"post"},
        "/api/mcp": {"post"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))
        for method in methods:
            assert paths[path][method].get("summary"), (path, method)
    events = paths["/api/jobs/{job_id}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert {p["name"] for p in events["parameters"]} >= {"after", "wait", "last-event-id"}
    job = api.get("/api/openapi.json").json()["components"]["schemas"]["Job"]["properties"]
    assert "waiting_for_approval" in str(job["status"]) and "callback_url" in job and "approvals" in job


def test_every_operation_that_needs_a_key_documents_both_schemes_and_anonymous_ones_none(api: TestClient) -> None:
    """The schemes are written into the document, not resolved as dependencies on every request."""
    from shared.api.security import access

    spec = api.get("/api/openapi.json").json()
    assert spec["components"]["securitySchemes"] == {
        "ApiKey": {
            "type": "apiKey",
            "description": "An API key (afk_<id>_<secret>).",
            "in": "header",
            "name": "X-API-Key",
        },
        "Bearer": {
            "type": "http",
            "description": "An Entra ID access token, or an API key as the bearer.",
            "scheme": "bearer",
        },
    }
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            needs_key = operation["x-access"]["role"] != "anonymous"
            expected = [{"ApiKey": []}, {"Bearer": []}] if needs_key else None
            assert operation.get("security") == expected, (method, path)
            if needs_key:
                assert {"401", "429"} <= set(operation["responses"]), (method, path)
    need = access("submitter", "own")
    assert list(inspect.signature(need).parameters) == ["request", "caller"]  # nothing resolved only for the docs
