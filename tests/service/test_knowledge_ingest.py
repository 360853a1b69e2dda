"""Ingesting real files through the service and the API: identities, versions, refusals, citations, jobs."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from agents.citations import verify
from shared.engine.backends import Backends
from shared.services import ingestion, knowledge
from shared.services.messages import handle_message
from tests.fixtures.documents import PNG_1PX, docx, html_page, pdf, scanned_pdf

PAGES = [
    ["Disaster recovery plan", "Fail over to the Osaka region when Tokyo is down for more than an hour."],
    ["Restore procedure", "Restore the knowledge index from the newest backup and verify the checksums."],
]


def drain(b: Backends, *, deliveries: int = 1) -> int:
    """Deliver every queued message through the app's queue function (each `deliveries` times); count them."""
    handled = 0
    while True:
        messages = b.queue.receive(max_count=10)  # type: ignore[attr-defined]
        if not messages:
            return handled
        for message in messages:
            for _ in range(deliveries):
                handle_message(b, message.body, message.delivery_count)
            b.queue.complete(message)  # type: ignore[attr-defined]
            handled += 1


def test_same_stem_different_formats_are_two_documents(backends: Backends) -> None:
    results = knowledge.ingest(backends, [("t.pdf", pdf(PAGES)), ("t.html", html_page("T", "<p>Hello tide.</p>"))])
    assert [r.status for r in results] == ["added", "added"]
    assert results[0].id != results[1].id
    assert backends.index.get_chunks(results[0].id)[0].page == 1
    assert "Hello tide." in backends.index.get_chunks(results[1].id)[0].content


def test_unchanged_upload_does_nothing_and_changed_one_replaces_the_chunks(backends: Backends) -> None:
    (first,) = knowledge.ingest(backends, [("guide.pdf", pdf(PAGES))])
    record = knowledge.get_document(backends, first.id)
    (again,) = knowledge.ingest(backends, [("guide.pdf", pdf(PAGES))])
    assert again.status == "unchanged" and again.version == first.version
    assert knowledge.get_document(backends, first.id).updated_at == record.updated_at  # nothing written

    revised = [*PAGES, ["Appendix", "Call the vendor only after the restore is verified."]]
    (second,) = knowledge.ingest(backends, [("guide.pdf", pdf(revised))])
    assert second.status == "updated" and second.id == first.id and second.version != first.version
    chunks = backends.index.get_chunks(first.id)
    assert {c.version for c in chunks} == {second.version}
    assert any("Call the vendor" in c.content for c in chunks)
    record = knowledge.get_document(backends, first.id)
    assert record.previous_versions == [first.version] and record.pages == 3 and record.kind == "pdf"


def test_scope_makes_the_same_name_another_document(backends: Backends) -> None:
    a = knowledge.read_upload("guide.md", b"# Guide\n\nA.", scope="team-a")
    b = knowledge.read_upload("guide.md", b"# Guide\n\nB.", scope="team-b")
    assert a.document.id != b.document.id
    assert knowledge.read_upload("guide.md", b"x", scope="team-a").document.id == a.document.id


def test_refusals_carry_their_reasons_and_the_rest_is_indexed(backends: Backends) -> None:
    results = knowledge.ingest(
        backends,
        [("scan.pdf", scanned_pdf()), ("logo.md", PNG_1PX), ("ok.md", b"# Ok\n\nThe restore is verified.")],
    )
    assert [r.status for r in results] == ["refused", "refused", "added"]
    assert "no text layer" in (results[0].reason or "")
    assert "PNG image" in (results[1].reason or "")
    assert backends.index.count() == 1


def test_a_citation_names_version_page_and_section(backends: Backends) -> None:
    data = docx([("Heading 1", "Escalation"), ("Normal", "Escalate to the platform team when the backlog grows.")])
    (result,) = knowledge.ingest(backends, [("handbook.docx", data), ("dr.pdf", pdf(PAGES))])[:1]
    (chunk,) = backends.index.get_chunks(result.id)
    checked = verify(
        "Escalate early [1].",
        [{"n": 1, "doc_id": chunk.doc_id, "chunk_id": 0, "quote": "Escalate to the platform team"}],
        {chunk.key: chunk},
    )
    (citation,) = checked.citations
    assert (citation.version, citation.section) == (result.version, "Escalation")
    pdf_doc = knowledge.list_documents(backends)
    (dr,) = [d for d in pdf_doc if d.kind == "pdf"]
    page_two = next(c for c in backends.index.get_chunks(dr.id) if "Restore the knowledge" in c.content)
    assert page_two.page in (1, 2)  # the chunk starts on page 1 or 2 and holds page 2's text
    cited = verify(
        "x [1]",
        [{"n": 1, "doc_id": dr.id, "chunk_id": page_two.chunk_id, "quote": "Restore the knowledge index"}],
        {page_two.key: page_two},
    ).citations[0]
    assert cited.page == page_two.page and cited.version == dr.version


def test_delete_removes_chunks_and_record(backends: Backends) -> None:
    (result,) = knowledge.ingest(backends, [("gone.md", b"# Gone\n\nSoon removed.")])
    assert knowledge.delete_document(backends, result.id) == 1
    assert knowledge.list_documents(backends) == []
    with pytest.raises(knowledge.DocumentNotFound):
        knowledge.delete_document(backends, result.id)


# --- over HTTP ------------------------------------------------------------------------------------


def test_upload_real_files_over_http(api: TestClient, backends: Backends) -> None:
    files = [
        ("file", ("dr.pdf", pdf(PAGES), "application/pdf")),
        (
            "file",
            ("page.html", html_page("Restore page", "<article><p>Verify the checksums.</p></article>"), "text/html"),
        ),
        (
            "file",
            ("hb.docx", docx([("Heading 1", "Triage"), ("Normal", "Open an incident.")]), "application/octet-stream"),
        ),
        ("file", ("logo.md", PNG_1PX, "text/markdown")),
    ]
    r = api.post("/api/documents", files=files)
    assert r.status_code == 201, r.text
    by_name = {d["name"]: d for d in r.json()["indexed"]}
    assert [by_name[n]["status"] for n in ("dr.pdf", "page.html", "hb.docx", "logo.md")] == [
        "added",
        "added",
        "added",
        "refused",
    ]
    listed = {d["name"]: d for d in api.get("/api/documents").json()}
    assert listed["page.html"]["title"] == "Restore page" and listed["dr.pdf"]["pages"] == 2
    shown = api.get(f"/api/documents/{by_name['hb.docx']['id']}").json()
    assert shown["kind"] == "docx" and shown["version"] == by_name["hb.docx"]["version"]
    hit = api.get("/api/search", params={"q": "open an incident"}).json()[0]
    assert hit["section"] == "Triage" and hit["version"] == shown["version"]


def test_only_refused_files_answer_with_the_refusal(api: TestClient) -> None:
    r = api.post("/api/documents", params={"filename": "logo.md"}, content=PNG_1PX)
    assert r.status_code == 415 and r.headers["content-type"].startswith("application/problem+json")
    assert "PNG image" in r.json()["detail"] and "PDF (.pdf), HTML" in r.json()["detail"]
    r = api.post("/api/documents", files=[("file", ("scan.pdf", scanned_pdf(), "application/pdf"))])
    assert r.status_code == 422 and "no text layer" in r.json()["detail"]
    r = api.post("/api/documents", params={"filename": "guide.pdf"}, content=pdf(PAGES))
    assert r.status_code == 201 and r.json()["indexed"][0]["status"] == "added"
    again = api.post("/api/documents", params={"filename": "guide.pdf"}, content=pdf(PAGES))
    assert again.json()["indexed"][0]["status"] == "unchanged"


def test_large_upload_becomes_an_ingestion_job(app_env: dict[str, str], api: TestClient, backends: Backends) -> None:
    files = [
        ("file", (f"note-{n}.md", f"# Note {n}\n\nTide table {n} is checked.".encode(), "text/markdown"))
        for n in range(45)
    ]
    files.append(("file", ("logo.md", PNG_1PX, "text/markdown")))
    r = api.post("/api/documents", files=files, headers={"Idempotency-Key": "bulk-1"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/api/ingestions/{job['id']}"
    assert job["status"] == "queued" and job["files"] == 46 and job["batches"] == 1
    replay = api.post("/api/documents", files=files, headers={"Idempotency-Key": "bulk-1"})
    assert replay.status_code == 202 and replay.json()["id"] == job["id"]

    assert drain(backends, deliveries=2) == 1  # the replay's sends were dropped as duplicates
    done = api.get(r.headers["location"]).json()
    assert done["status"] == "succeeded" and done["files_done"] == 46
    assert (done["added"], done["refused"], done["chunks"]) == (45, 1, 45)
    assert done["refusals"][0]["name"] == "logo.md"
    assert backends.index.count() == 45


def test_ingestion_batches_are_idempotent_and_failures_are_recorded(backends: Backends) -> None:
    files = [(f"n{n}.md", f"# N{n}\n\nLine {n} of the tide log.".encode()) for n in range(7)]
    job = ingestion.submit_ingestion(backends, files, batch_files=3)
    assert job.batches == 3
    drain(backends, deliveries=3)
    done = ingestion.get_ingestion(backends, job.id)
    assert done.status == "succeeded" and done.added == 7 and sorted(done.batches_done) == [0, 1, 2]
    assert backends.index.count() == 7

    # A batch whose stored files vanished fails on every delivery; the last one writes the trail.
    broken = ingestion.submit_ingestion(backends, files[:2], batch_files=1)
    backends.objects.delete(f"ingestions/{broken.id}/batches/000001.json")
    message = ingestion.IngestionMessage(ingestion_id=broken.id, batch=1).model_dump_json().encode()
    for delivery in range(1, backends.settings.queue_max_delivery_count + 1):
        with pytest.raises(RuntimeError, match="missing"):
            handle_message(backends, message, delivery)
    handle_message(backends, ingestion.IngestionMessage(ingestion_id=broken.id, batch=0).model_dump_json().encode())
    failed = ingestion.get_ingestion(backends, broken.id)
    assert failed.status == "failed" and failed.failures[0].batch == 1
    assert "missing" in failed.failures[0].description
    assert json.loads(message)["kind"] == "ingest"

    # The operator puts the batch back and retries: a fresh message id, so duplicate detection lets it through.
    with pytest.raises(ingestion.NothingToRetry):
        ingestion.retry_failed(backends, job.id)
    replacement = ingestion.submit_ingestion(backends, files[1:2], batch_files=1)
    moved = backends.objects.get(f"ingestions/{replacement.id}/batches/000000.json")
    assert moved is not None
    backends.objects.put(f"ingestions/{broken.id}/batches/000001.json", moved.data)
    retried = ingestion.retry_failed(backends, broken.id)
    assert retried.status == "running" and retried.retries == 1
    drain(backends)
    healed = ingestion.get_ingestion(backends, broken.id)
    assert healed.status == "succeeded" and sorted(healed.batches_done) == [0, 1] and not healed.failures
