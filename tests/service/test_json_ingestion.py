"""POST /api/documents with JSON: small lists indexed at once, large ones as ingestion jobs, errors located."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from shared.engine.backends import Backends
from tests.service.test_knowledge_ingest import drain


def docs(n: int) -> list[dict[str, str]]:
    return [{"id": f"tide-{i}", "title": f"Tide table {i}", "content": f"High tide {i} is at dawn."} for i in range(n)]


def test_a_large_json_list_becomes_an_ingestion_job(api: TestClient, backends: Backends) -> None:
    body = json.dumps(docs(45))  # over INGEST_SYNC_MAX_FILES (20)
    headers = {"Content-Type": "application/json", "Idempotency-Key": "tides-1"}
    r = api.post("/api/documents", params={"scope": "shared"}, content=body, headers=headers)
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/api/ingestions/{job['id']}"
    assert (job["status"], job["files"], job["batches"]) == ("queued", 45, 1)
    replay = api.post("/api/documents", params={"scope": "shared"}, content=body, headers=headers)
    assert replay.json()["id"] == job["id"]

    assert drain(backends, deliveries=2) == 1  # a redelivered batch duplicates nothing
    done = api.get(r.headers["location"]).json()
    assert (done["status"], done["added"], done["chunks"], done["refused"]) == ("succeeded", 45, 45, 0)
    assert backends.index.count() == 45
    assert backends.index.get_chunks("tide-7")[0].content == "High tide 7 is at dawn."
    record = api.get("/api/documents/tide-7").json()
    assert (record["kind"], record["scope"]) == ("json", "shared")  # the upload's scope went through the queue


def test_a_small_json_upload_is_indexed_at_once(api: TestClient) -> None:
    r = api.post(
        "/api/documents", content=f" \n{json.dumps(docs(3), indent=2)}\n ", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 201, r.text
    assert [d["status"] for d in r.json()["indexed"]] == ["added"] * 3
    assert api.post("/api/documents", json=docs(1)[0]).json()["indexed"][0]["id"] == "tide-0"


def test_json_errors_name_the_document_and_field(api: TestClient, backends: Backends) -> None:
    bad = [*docs(2), {"id": "bad id!", "title": "t", "content": "c"}]
    r = api.post("/api/documents", json=bad)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "2.id", r.text
    for body in ("[]", "[1, 2", '[{"id": "a", "title": "t", "content": "c"}] x', "{not json", "\xff"):
        r = api.post("/api/documents", content=body.encode("latin-1"), headers={"Content-Type": "application/json"})
        assert r.status_code == 422, (body, r.text)
    assert backends.index.count() == 0
