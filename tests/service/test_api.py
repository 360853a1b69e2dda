"""The REST API contract: auth, tenants, idempotency, problem details, and nothing enqueued on rejection."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from shared.engine.backends import Backends
from shared.errors import DependencyUnavailable
from tests.fixtures.app import ingest_samples

KEYS = {
    "key-a": {"tenant": "acme", "role": "submitter"},
    "key-b": {"tenant": "globex", "role": "submitter"},
    "key-op": {"tenant": "acme", "role": "operator"},
}


@pytest.fixture
def tenants(app_env: dict[str, str]) -> None:
    app_env["API_KEYS"] = json.dumps(KEYS)
    app_env["MAX_BODY_BYTES"] = "20000"


def as_key(client: TestClient, key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def assert_problem(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"]
    return body


def nothing_enqueued(b: Backends) -> None:
    counts = b.queue.counts()
    assert (counts.active, counts.scheduled) == (0, 0)


def test_submit_answers_202_with_location_and_job(api: TestClient, backends: Backends) -> None:
    r = api.post("/api/jobs", json={"task": "What is a checkpoint?"})
    assert r.status_code == 202
    job = r.json()
    assert r.headers["location"] == f"/api/jobs/{job['id']}"
    assert job["status"] == "queued" and job["tenant"] == "dev"
    assert api.get(r.headers["location"]).json()["id"] == job["id"]
    assert backends.queue.counts().active == 1


@pytest.mark.parametrize("local_reads", [True, False])
def test_get_job_reads_on_the_event_loop_only_from_a_local_store(
    api: TestClient, backends: Backends, monkeypatch: pytest.MonkeyPatch, local_reads: bool
) -> None:
    import threading

    job = api.post("/api/jobs", json={"task": "Where is it read?"}).json()
    readers: list[str] = []
    read = backends.objects.get

    def watched(key: str):  # type: ignore[no-untyped-def]
        readers.append(threading.current_thread().name)
        return read(key)

    monkeypatch.setattr(backends.objects, "get", watched)
    monkeypatch.setattr(backends.objects, "local_reads", local_reads)
    r = api.get(f"/api/jobs/{job['id']}")
    assert r.status_code == 200 and r.json()["id"] == job["id"] and "cost" in r.json()
    pooled = [name.startswith("AnyIO worker thread") for name in readers]
    assert pooled and all(p is not local_reads for p in pooled), readers  # a network store: never on the loop
    assert api.get("/api/jobs/job-nope").status_code == 404


def test_idempotency_key_replays_and_conflicts(api: TestClient, backends: Backends) -> None:
    first = api.post("/api/jobs", json={"task": "same"}, headers={"Idempotency-Key": "k1"})
    again = api.post("/api/jobs", json={"task": "same"}, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers.get("idempotent-replayed") == "true"
    assert_problem(api.post("/api/jobs", json={"task": "different"}, headers={"Idempotency-Key": "k1"}), 409)
    assert backends.queue.counts().active == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"task": "x", "colour": "red"}, "colour"),
        ({"task": ""}, "task"),
        ({"task": "   "}, "task"),
        ({}, "task"),
        ({"task": "x", "policy": {"max_steps": 0}}, "policy.max_steps"),
        ({"task": "x", "policy": {"bogus": 1}}, "policy.bogus"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(api: TestClient, backends: Backends, body: dict, field: str) -> None:
    problem = assert_problem(api.post("/api/jobs", json=body), 422)
    assert any(e["field"] == field for e in problem["errors"]), problem
    nothing_enqueued(backends)


def test_oversized_body_is_413(tenants: None, api: TestClient, backends: Backends) -> None:
    assert_problem(
        api.post(
            "/api/jobs",
            content=json.dumps({"task": "x" * 30_000}),
            headers={"X-API-Key": "key-a", "Content-Type": "application/json"},
        ),
        413,
    )
    nothing_enqueued(backends)


def test_missing_or_wrong_key_is_401(api: TestClient, backends: Backends) -> None:
    assert_problem(api.post("/api/jobs", json={"task": "x"}, headers={"X-API-Key": "nope"}), 401)
    r = TestClient(api.app).post("/api/jobs", json={"task": "x"})
    assert_problem(r, 401)
    assert r.headers["www-authenticate"] == "Bearer"
    assert api.get("/api/jobs", headers={"X-API-Key": "", "Authorization": "Bearer dev-local-key"}).status_code == 200
    nothing_enqueued(backends)


def test_a_tenant_never_sees_another_tenants_job(tenants: None, api: TestClient, backends: Backends) -> None:
    job = api.post("/api/jobs", json={"task": "secret plans"}, headers=as_key(api, "key-a")).json()
    other = as_key(api, "key-b")
    for r in (
        api.get(f"/api/jobs/{job['id']}", headers=other),
        api.get(f"/api/jobs/{job['id']}/report", headers=other),
        api.post(f"/api/jobs/{job['id']}/cancel", headers=other),
    ):
        assert_problem(r, 404)
    assert api.get("/api/jobs", headers=other).json()["jobs"] == []
    assert backends.jobs.get(job["id"]).cancel_requested is False
    assert backends.queue.counts().active == 1


def test_list_is_newest_first_paged_and_filtered(api: TestClient) -> None:
    ids = [api.post("/api/jobs", json={"task": f"q{i}"}).json()["id"] for i in range(5)]
    page1 = api.get("/api/jobs", params={"limit": 2}).json()
    page2 = api.get("/api/jobs", params={"limit": 2, "cursor": page1["next_cursor"]}).json()
    page3 = api.get("/api/jobs", params={"limit": 2, "cursor": page2["next_cursor"]}).json()
    listed = [j["id"] for p in (page1, page2, page3) for j in p["jobs"]]
    assert listed == list(reversed(ids)) and page3["next_cursor"] is None
    assert api.get("/api/jobs", params={"status": "succeeded"}).json()["jobs"] == []
    assert_problem(api.get("/api/jobs", params={"limit": 0}), 422)
    assert_problem(api.get("/api/jobs", params={"status": "bogus"}), 422)


def test_report_is_409_until_finished_and_cancel_is_recorded(api: TestClient) -> None:
    job = api.post("/api/jobs", json={"task": "q"}).json()
    assert_problem(api.get(f"/api/jobs/{job['id']}/report"), 409)
    assert api.post(f"/api/jobs/{job['id']}/cancel").json()["cancel_requested"] is True


def test_documents_upload_search_and_delete(api: TestClient, backends: Backends) -> None:
    r = api.post(
        "/api/documents",
        json=[{"id": "dr-plan", "title": "DR plan", "content": "Fail over to Osaka. Restore from the nightly backup."}],
    )
    assert r.status_code == 201 and r.json()["indexed"][0]["id"] == "dr-plan"
    r = api.post(
        "/api/documents",
        params={"filename": "notes.ja.md"},
        content="# メモ\n\n障害時は大阪に切り替える。",
        headers={"Content-Type": "text/markdown"},
    )
    assert r.status_code == 201
    hits = api.get("/api/search", params={"q": "nightly backup"}).json()
    assert hits[0]["doc_id"] == "dr-plan"
    assert api.get("/api/search", params={"q": "大阪に切り替え"}).json()[0]["title"] == "メモ"
    assert api.delete("/api/documents/dr-plan").json()["chunks_removed"] >= 1
    assert_problem(api.delete("/api/documents/dr-plan"), 404)
    assert_problem(api.post("/api/documents", json={"id": "bad id!", "title": "t", "content": "c"}), 422)
    assert_problem(api.post("/api/documents", content=b"x", headers={"Content-Type": "application/pdf"}), 415)
    assert_problem(
        api.post(
            "/api/documents", params={"filename": "empty.md"}, content=b"", headers={"Content-Type": "text/markdown"}
        ),
        422,
    )


def test_document_writes_need_an_operator_key(tenants: None, api: TestClient) -> None:
    doc = {"id": "d", "title": "t", "content": "c"}
    assert_problem(api.post("/api/documents", json=doc, headers=as_key(api, "key-a")), 403)
    assert api.post("/api/documents", json=doc, headers=as_key(api, "key-op")).status_code == 201


def test_health_tells_anonymous_callers_only_up_or_down_and_operators_each_dependency(
    api: TestClient, backends: Backends
) -> None:
    ingest_samples(backends)
    r = TestClient(api.app).get("/api/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    deps = api.get("/api/health").json()["dependencies"]  # the fixture's key is an operator's
    assert set(deps) == {"queue", "storage", "index", "model"}
    assert all(d["status"] == "up" and d["ms"] >= 0 for d in deps.values())


def test_health_is_503_when_a_dependency_is_down(api: TestClient, backends: Backends) -> None:
    class UnreachableIndex:
        def ping(self) -> None:
            raise DependencyUnavailable("search service did not answer")

    backends.index = UnreachableIndex()  # type: ignore[assignment]
    r = TestClient(api.app).get("/api/health")
    assert r.status_code == 503 and r.json() == {"status": "down"}
    r = api.get("/api/health")
    assert r.status_code == 503 and r.json()["dependencies"]["index"]["status"] == "down"


def test_openapi_document_and_docs_are_served(api: TestClient) -> None:
    spec = api.get("/api/openapi.json").json()
    assert {
        "/api/jobs",
        "/api/jobs/{job_id}",
        "/api/jobs/{job_id}/report",
        "/api/jobs/{job_id}/cancel",
        "/api/documents",
        "/api/documents/{doc_id}",
        "/api/search",
        "/api/health",
    } <= set(spec["paths"])
    assert api.get("/api/docs").status_code == 200


@pytest.fixture
def three_per_minute(app_env: dict[str, str]) -> None:
    app_env["RATE_LIMIT_PER_MINUTE"] = "3"  # read when the app is built, so before `api`


@pytest.mark.usefixtures("three_per_minute")
def test_rate_limit_answers_429_with_retry_after(api: TestClient) -> None:
    codes = [api.get("/api/jobs").status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3] == 429
    limited = assert_problem(api.get("/api/jobs"), 429)
    assert 1 <= int(api.get("/api/jobs").headers["Retry-After"]) <= 60, limited
