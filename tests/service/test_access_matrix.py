"""Every route x every kind of caller x own and other tenant, from the app's own OpenAPI route list.

Each operation's `x-access` (role and scope, declared by its caller parameter) gives the expected
outcome; an operation without one fails here, so a new route cannot be added without a decision.

Callers: no key, a wrong key, and acme's submitter, operator and admin keys. Targets: acme's own
things and globex's (a job, its dead letter, a schedule, and `?tenant=` where the route takes one).
Outcomes: 401 without a valid key; 403 `role-required` below the route's role; another tenant's
things are 404 (or 403 `tenant-out-of-scope`) unless the route's scope lets an admin reach them;
otherwise the request passes the gate (whatever the route then answers, never 401/403 or a 5xx).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from shared.api.security import ROLES, role_at_least
from shared.contracts import Document
from shared.engine.backends import Backends
from shared.ports import PermanentModelError
from shared.services import knowledge, schedules
from shared.services.schedules import ScheduleRequest
from tests.fixtures.app import ingest_samples
from tests.service.test_admin_api import dead_letter_first_steps, submit

OWN, OTHER = "acme", "globex"
KEYS = {
    "sub-acme": {"tenant": OWN, "role": "submitter"},
    "op-acme": {"tenant": OWN, "role": "operator"},
    "admin-acme": {"tenant": OWN, "role": "admin"},
}
CALLERS: dict[str, dict[str, str]] = {
    "none": {},
    "bad key": {"X-API-Key": "afk_0123456789abcdef_" + "x" * 43},
    "submitter": {"X-API-Key": "sub-acme"},
    "operator": {"X-API-Key": "op-acme"},
    "admin": {"X-API-Key": "admin-acme"},
}
ID_PARAMS = {"job_id", "message_id", "schedule_id", "doc_id"}  # path ids that belong to a tenant
SHARED_IDS = {"chunk_id": "0"}


@pytest.fixture(autouse=True)
def keys(app_env: dict[str, str]) -> None:
    app_env["API_KEYS"] = json.dumps(KEYS)
    # The walk sends hundreds of requests and dozens of wrong keys from one address: limits are tested elsewhere.
    app_env.update(RATE_LIMIT_PER_MINUTE="100000", TENANT_RATE_LIMIT_PER_MINUTE="100000")
    app_env["AUTH_FAILURES_PER_MINUTE"] = "100000"


@pytest.fixture
def client(backends: Backends) -> Any:
    from shared.api.app import create_api

    with TestClient(create_api(backends), raise_server_exceptions=False) as c:
        yield c


def world(b: Backends) -> dict[str, dict[str, str]]:
    """Each tenant's own job, dead letter and schedule: the ids the walk puts in paths."""
    ingest_samples(b)
    jobs = {tenant: submit(b, tenant) for tenant in (OWN, OTHER)}
    letters = dead_letter_first_steps(b, {jobs[t]: PermanentModelError("refused") for t in (OWN, OTHER)})
    found = {}
    for tenant, letter in zip((OWN, OTHER), letters, strict=True):
        schedule = schedules.create(b, tenant, ScheduleRequest(task="weekly digest", cron="0 0 9 * * 1"))
        notes = Document(id=f"{tenant}-notes", title="Notes", content=f"# Notes\n\nThe checkpoint notes of {tenant}.")
        knowledge.index_documents(b, [notes], scope=tenant)  # the tenant's own knowledge
        found[tenant] = {"job_id": jobs[tenant], "message_id": letter, "schedule_id": schedule.id, "doc_id": notes.id}
    return found


def expected(access: dict[str, str], caller: str, tenant_bound: bool, own: bool) -> str:
    if access["role"] == "anonymous":
        return "passes"
    if caller in ("none", "bad key"):
        return "401"
    if not role_at_least(caller, access["role"]):
        return "403 role-required"
    if tenant_bound and not own and (access["scope"] == "own" or (access["scope"] == "tenant" and caller != "admin")):
        return "hidden"
    return "passes"


def outcome_holds(wanted: str, status: int, body: dict[str, Any]) -> bool:
    kind = str(body.get("type", "")).rsplit("/", 1)[-1]
    if wanted == "401":
        return status == 401
    if wanted == "403 role-required":
        return status == 403 and kind == "role-required"
    if wanted == "hidden":
        return status == 404 or (status == 403 and kind == "tenant-out-of-scope")
    return status not in (401, 403) and status < 500


def request_for(path: str, method: str, operation: dict[str, Any], ids: dict[str, str], tenant: str) -> dict[str, Any]:
    params = {p["name"]: p for p in operation.get("parameters", [])}
    url = path
    for name, p in params.items():
        if p["in"] == "path":
            url = url.replace("{" + name + "}", ids.get(name, SHARED_IDS.get(name, "x")))
    query = {"tenant": tenant} if "tenant" in params else {}
    query.update({"q": "checkpoint"} if "q" in params else {})
    query.update({"wait": "0"} if "wait" in params else {})
    request: dict[str, Any] = {"method": method.upper(), "url": url, "params": query}
    content = operation.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        request["json"] = {}
        request["headers"] = {"Accept": "application/json, text/event-stream"}
    elif path == "/api/documents" and method == "post":
        request.update(content=b"# Note\n\nA line.", headers={"Content-Type": "text/markdown"})
        query["filename"] = "note.md"
    return request


def test_every_route_x_role_x_tenant_gets_its_declared_outcome(client: TestClient, backends: Backends) -> None:
    ids = world(backends)
    spec = client.get("/api/openapi.json").json()
    undeclared, failures, tally = [], [], Counter()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            access = operation.get("x-access")
            if access is None:
                undeclared.append(f"{method.upper()} {path}")
                continue
            tenant_bound = bool(ID_PARAMS & set(path.replace("}", "{").split("{"))) or any(
                p["name"] == "tenant" for p in operation.get("parameters", [])
            )
            for tenant in (OWN, OTHER):
                for caller, headers in CALLERS.items():
                    wanted = expected(access, caller, tenant_bound, tenant == OWN)
                    request = request_for(path, method, operation, ids[tenant], tenant)
                    request["headers"] = {**request.get("headers", {}), **headers}
                    response = client.request(**request)
                    body = response.json() if "json" in response.headers.get("content-type", "") else {}
                    tally[wanted] += 1
                    if not outcome_holds(wanted, response.status_code, body if isinstance(body, dict) else {}):
                        failures.append((method.upper(), path, caller, tenant, wanted, response.status_code, body))
    assert not undeclared, f"routes without a declared access (use an access dependency): {undeclared}"
    assert not failures, "\n".join(map(str, failures))
    operations_count = sum(len(ops) for ops in spec["paths"].values())
    assert sum(tally.values()) == operations_count * len(CALLERS) * 2
    print(f"\naccess matrix: {operations_count} operations x {len(CALLERS)} callers x 2 tenants = {dict(tally)}")


def test_every_route_under_api_declares_its_access(client: TestClient) -> None:
    """Routes outside the OpenAPI too (the docs pages, MCP): the middleware's table has a decision for each."""
    table = client.app.state.access  # type: ignore[attr-defined]
    missing = [f"{sorted(r.methods)} {r.path}" for r in table if r.path.startswith("/api") and r.access is None]
    assert not missing, f"routes without a declared access (AnonymousDep, SubmitterDep, ...): {missing}"
    paths = {r.path for r in table}
    assert {"/api/openapi.json", "/api/docs", "/api/health", "/api/mcp"} <= paths


def test_a_route_without_a_declaration_is_caught_and_admin_only(backends: Backends) -> None:
    """The matrix fails on an undeclared route; until then, the middleware lets only an admin through."""
    from shared.api.app import create_api

    app: FastAPI = create_api(backends)
    extra = APIRouter()

    @extra.get("/api/undeclared")
    def undeclared() -> dict[str, str]:
        return {"ok": "yes"}

    app.include_router(extra)
    from shared.api.security import ANONYMOUS, Access, declare_access

    declare_access(app, {"/api/openapi.json": Access(ANONYMOUS, "public")})
    with TestClient(app) as c:
        assert "x-access" not in c.get("/api/openapi.json").json()["paths"]["/api/undeclared"]["get"]
        assert c.get("/api/undeclared").status_code == 401
        assert c.get("/api/undeclared", headers={"X-API-Key": "op-acme"}).status_code == 403
        assert c.get("/api/undeclared", headers={"X-API-Key": "admin-acme"}).status_code == 200


def test_roles_are_ordered() -> None:
    assert ROLES == ("submitter", "operator", "admin")
    assert role_at_least("admin", "operator") and not role_at_least("operator", "admin")
    assert not role_at_least("nobody", "submitter")
