"""The OpenAPI document names every route of progress events, approvals, schedules and MCP."""

from __future__ import annotations

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
