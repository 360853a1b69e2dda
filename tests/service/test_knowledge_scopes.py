"""Tenants own their knowledge: acme's private document never reaches globex, by any path.

Two tenants, a submitter and an operator key each. acme's operator uploads a private document and
publishes a shared one; globex's operator uploads its own. Every way globex could read acme's
document is probed (search with several queries and filters, chunk reads, the document list and
record, delete, overwriting its id, a globex job's report and what the job read), and each probe
is counted in PROBES; every probe has a positive control (acme, or the shared document, is found
the same way), so an empty answer cannot pass for isolation by accident.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from agents.state import AgentState
from agents.tools import Toolbox, ToolRefused
from shared.api.routes_documents import browse_scopes, id_scopes, may_publish_shared
from shared.api.security import Caller
from shared.contracts import Chunk, Document, knowledge_scopes
from shared.engine.backends import Backends
from shared.engine.layout import document_key
from shared.maintenance import backup
from shared.services import jobs, knowledge
from tests.fixtures.agent_scripts import run_steps

KEYS = {
    "acme-sub": {"tenant": "acme", "role": "submitter"},
    "acme-op": {"tenant": "acme", "role": "operator"},
    "globex-sub": {"tenant": "globex", "role": "submitter"},
    "globex-op": {"tenant": "globex", "role": "operator"},
    "platform-admin": {"tenant": "platform", "role": "admin"},
}
SECRET = "The Zephyr merger closes on 14 March at a price of 41 dollars per share."
ACME_DOC = {
    "id": "acme-zephyr",
    "title": "Zephyr merger terms",
    "content": f"# Zephyr merger\n\n{SECRET} The board approved the Zephyr merger terms in private.\n",
}
SHARED_DOC = {
    "id": "merger-handbook",
    "title": "Merger handbook",
    "content": "# Mergers\n\nEvery merger is announced by the communications team after the board approves it.\n",
}
GLOBEX_DOC = {
    "id": "globex-plan",
    "title": "Globex plan",
    "content": "# Plan\n\nGlobex plans its own merger review for the autumn, with the Zephyr team.\n",
}
QUERIES = ["Zephyr merger", "merger closes March", "41 dollars per share", "Zephyr merger terms", "board approved"]
TASK = "When does the Zephyr merger close and at what price?"

# (section, probe) for every cross-tenant attempt made; the report counts them per section.
PROBES: list[tuple[str, str]] = []


def probe(section: str, what: str) -> None:
    PROBES.append((section, what))


@pytest.fixture(scope="module", autouse=True)
def probe_count() -> Iterator[None]:
    """After the module: the cross-tenant probes per section (run with -s to see them)."""
    yield
    sections: dict[str, int] = {}
    for section, _ in PROBES:
        sections[section] = sections.get(section, 0) + 1
    print(f"\ncross-tenant probes: {len(PROBES)} {sections}")


@pytest.fixture
def tenants(app_env: dict[str, str]) -> None:
    app_env["API_KEYS"] = json.dumps(KEYS)


@pytest.fixture
def world(tenants: None, backends: Backends, api: TestClient) -> Iterator[TestClient]:
    """acme's private document, a shared one (published by acme's operator), globex's own."""
    up = api.post("/api/documents", json=ACME_DOC, headers=key("acme-op"))
    assert up.status_code == 201, up.text
    assert api.post(
        "/api/documents", params={"scope": "shared"}, json=SHARED_DOC, headers=key("platform-admin")
    ).is_success
    assert api.post("/api/documents", json=GLOBEX_DOC, headers=key("globex-op")).is_success
    yield api


def key(name: str) -> dict[str, str]:
    return {"X-API-Key": name}


def doc_ids(hits: list[dict[str, Any]]) -> set[str]:
    return {h["doc_id"] for h in hits}


# --- search ---------------------------------------------------------------------------------------


def test_search_never_returns_another_tenants_document(world: TestClient) -> None:
    api = world
    for query in QUERIES:
        mine = api.get("/api/search", params={"q": query, "top": 50}, headers=key("acme-sub")).json()
        assert "acme-zephyr" in doc_ids(mine)  # the control: acme finds its own
        for name in ("globex-sub", "globex-op"):
            probe("search", f"{name} q={query}")
            hits = api.get("/api/search", params={"q": query, "top": 50}, headers=key(name)).json()
            assert "acme-zephyr" not in doc_ids(hits)
            assert {h["scope"] for h in hits} <= {"globex", "shared"}
            probe("search", f"{name} q={query} doc_id=acme-zephyr")
            narrowed = api.get("/api/search", params={"q": query, "doc_id": "acme-zephyr"}, headers=key(name))
            assert narrowed.status_code == 200 and narrowed.json() == []
            probe("search", f"{name} q={query} scope=acme")
            assert api.get("/api/search", params={"q": query, "scope": "acme"}, headers=key(name)).status_code == 403
    # Shared documents are visible to both tenants, with their scope.
    for name in ("acme-sub", "globex-sub"):
        hits = api.get("/api/search", params={"q": "merger announced communications"}, headers=key(name)).json()
        assert ("merger-handbook", "shared") in {(h["doc_id"], h["scope"]) for h in hits}
    own = api.get("/api/search", params={"q": "Zephyr", "scope": "globex"}, headers=key("globex-sub")).json()
    assert doc_ids(own) == {"globex-plan"}  # naming one's own scope narrows to it


# --- chunk reads, records, list, delete -------------------------------------------------------------


def test_chunk_reads_records_lists_and_deletes_of_another_tenants_document_are_404(
    world: TestClient, backends: Backends
) -> None:
    api = world
    chunks = backends.index.get_chunks("acme-zephyr")
    assert chunks and {c.scope for c in chunks} == {"acme"}
    assert api.get("/api/documents/acme-zephyr/chunks/0", headers=key("acme-sub")).status_code == 200  # control
    for name in ("globex-sub", "globex-op"):
        for n in range(len(chunks) + 1):
            probe("chunk read", f"{name} chunk {n}")
            assert api.get(f"/api/documents/acme-zephyr/chunks/{n}", headers=key(name)).status_code == 404
    shared = api.get("/api/documents/merger-handbook/chunks/0", headers=key("globex-sub"))
    assert shared.status_code == 200 and shared.json()["scope"] == "shared"

    listed = api.get("/api/documents", headers=key("globex-op")).json()
    probe("document list", "globex-op list")
    assert {d["id"] for d in listed} == {"merger-handbook", "globex-plan"}
    probe("document list", "globex-op list scope=acme")
    assert api.get("/api/documents", params={"scope": "acme"}, headers=key("globex-op")).status_code == 403
    mine = api.get("/api/documents", params={"scope": "acme"}, headers=key("acme-op")).json()
    assert [(d["id"], d["scope"]) for d in mine] == [("acme-zephyr", "acme")]  # control

    probe("document record", "globex-op get")
    assert api.get("/api/documents/acme-zephyr", headers=key("globex-op")).status_code == 404
    assert api.get("/api/documents/acme-zephyr", headers=key("acme-op")).json()["scope"] == "acme"
    probe("delete", "globex-op delete")
    assert api.delete("/api/documents/acme-zephyr", headers=key("globex-op")).status_code == 404
    assert backends.index.get_chunks("acme-zephyr")  # still there
    assert knowledge.get_record(backends, "acme-zephyr") is not None


def test_an_id_taken_in_another_scope_is_refused_not_overwritten(world: TestClient, backends: Backends) -> None:
    api = world
    before = backends.index.get_chunks("acme-zephyr")
    takeover = {**ACME_DOC, "content": "Globex wrote this over acme's document."}
    probe("doc_id collision", "globex-op JSON upload with acme's id")
    refused = api.post("/api/documents", json=takeover, headers=key("globex-op"))
    assert refused.status_code == 409 and "taken" in refused.json()["detail"]
    probe("doc_id collision", "globex-op JSON list with acme's id last")
    listed = api.post("/api/documents", json=[GLOBEX_DOC | {"id": "globex-new"}, takeover], headers=key("globex-op"))
    assert listed.status_code == 409
    assert backends.index.get_chunks("globex-new") == []  # nothing of the refused request was written
    probe("doc_id collision", "globex-op file upload with ?doc_id=acme-zephyr")
    upload = api.post(
        "/api/documents",
        params={"filename": "x.md", "doc_id": "acme-zephyr"},
        content=b"# x\n\nGlobex text.\n",
        headers={**key("globex-op"), "Content-Type": "text/markdown"},
    )
    assert upload.status_code == 409
    probe("doc_id collision", "globex-op upload into scope acme")
    into_acme = api.post("/api/documents", params={"scope": "acme"}, json=takeover, headers=key("globex-op"))
    assert into_acme.status_code == 403
    probe("doc_id collision", "globex-op overwriting the shared handbook from its own scope")
    over_shared = {**SHARED_DOC, "content": "Globex's version of the handbook."}
    assert api.post("/api/documents", json=over_shared, headers=key("globex-op")).status_code == 409
    assert backends.index.get_chunks("acme-zephyr") == before
    # The owner replaces its own document as before.
    again = api.post("/api/documents", json={**ACME_DOC, "content": "New terms."}, headers=key("acme-op"))
    assert again.status_code == 201 and again.json()["indexed"][0]["status"] == "updated"


def race(b: Backends, doc_id: str, tenants: tuple[str, ...]) -> dict[str, str]:
    """Each tenant ingests a new document under doc_id at the same moment; "indexed" or "taken" per tenant."""
    import threading

    outcomes: dict[str, str] = {}
    barrier = threading.Barrier(len(tenants))

    def ingest(tenant: str) -> None:
        doc = Document(id=doc_id, title=tenant, content=f"{tenant} wrote this text about tides.")
        barrier.wait()
        try:
            knowledge.index_documents(b, [doc], scope=tenant)
            outcomes[tenant] = "indexed"
        except knowledge.DocumentIdTaken:
            outcomes[tenant] = "taken"

    threads = [threading.Thread(target=ingest, args=(t,)) for t in tenants]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_two_tenants_racing_for_one_new_id_leave_one_owner(backends: Backends) -> None:
    """Both pass the "is the id free?" check at once; the create-only claim lets exactly one index it."""
    for round_no in range(15):
        doc_id = f"race-{round_no}"
        outcomes = race(backends, doc_id, ("acme", "globex"))
        probe("doc_id collision", f"race {round_no}")
        assert sorted(outcomes.values()) == ["indexed", "taken"], outcomes
        [winner] = [t for t, o in outcomes.items() if o == "indexed"]
        record = knowledge.get_record(backends, doc_id)
        assert record is not None and record.scope == winner and record.version
        assert {(c.scope, c.title) for c in backends.index.get_chunks(doc_id)} == {(winner, winner)}


def test_uploads_default_to_the_callers_tenant_and_shared_needs_a_publisher(world: TestClient) -> None:
    api = world
    assert api.get("/api/documents/globex-plan", headers=key("globex-op")).json()["scope"] == "globex"
    assert api.get("/api/documents/merger-handbook", headers=key("globex-op")).json()["scope"] == "shared"
    caller = Caller(tenant="globex", role="submitter", key_id="k")
    assert not may_publish_shared(caller) and not may_publish_shared(Caller("globex", "operator", "k"))
    assert may_publish_shared(Caller("platform", "admin", "k"))
    # Submitters cannot upload at all; only the platform admin publishes shared, no tenant's operator.
    assert api.post("/api/documents", json=GLOBEX_DOC, headers=key("globex-sub")).status_code == 403
    probe("shared publishing", "acme-op publishing into shared")
    handbook = {**SHARED_DOC, "content": "Acme's own version of the handbook."}
    assert (
        api.post("/api/documents", params={"scope": "shared"}, json=handbook, headers=key("acme-op")).status_code == 403
    )
    probe("shared publishing", "acme-op deleting a shared document")
    assert api.delete("/api/documents/merger-handbook", headers=key("acme-op")).status_code == 403


def test_an_admin_looks_across_tenants_only_by_naming_the_scope() -> None:
    admin = Caller(tenant="platform", role="admin", key_id="k")
    assert browse_scopes(admin) == knowledge_scopes("platform")
    assert browse_scopes(admin, "acme") == ["acme"]
    assert id_scopes(admin) is None
    operator = Caller(tenant="globex", role="operator", key_id="k")
    assert id_scopes(operator) == ["globex", "shared"]


def test_an_ingestion_job_keeps_its_scope_through_the_queue(world: TestClient, backends: Backends) -> None:
    from tests.service.test_knowledge_ingest import drain

    files = [
        ("file", (f"tide-{n}.md", f"# Tide {n}\n\nAcme tide table {n}.".encode(), "text/markdown")) for n in range(45)
    ]
    r = world.post("/api/documents", files=files, headers=key("acme-op"))
    assert r.status_code == 202, r.text
    assert r.json()["scope"] == "acme"
    probe("ingestion", "globex-op reads acme's ingestion job")
    assert world.get(r.headers["location"], headers=key("globex-op")).status_code == 404
    probe("ingestion", "globex-op retries acme's ingestion job")
    assert world.post(r.headers["location"] + "/retry", headers=key("globex-op")).status_code == 404
    drain(backends)
    done = world.get(r.headers["location"], headers=key("acme-op")).json()
    assert done["status"] == "succeeded" and done["added"] == 45
    scopes = {c.scope for c in backends.index.export(size=10_000) if c.title.startswith("Tide ")}
    assert scopes == {"acme"}
    probe("ingestion", "globex-sub searches the ingested tide tables")
    hits = world.get("/api/search", params={"q": "acme tide table"}, headers=key("globex-sub")).json()
    assert not [h for h in hits if h["title"].startswith("Tide ")]


# --- jobs: the agent's tools and the report ----------------------------------------------------------


def test_a_globex_job_never_reads_or_reports_acmes_document(world: TestClient, backends: Backends) -> None:
    acme_job, _ = jobs.submit(backends, "acme", jobs.JobRequest(task=TASK))
    acme_done = run_steps(backends, acme_job.id)
    acme_report = backends.reports.get(acme_job.id)
    assert acme_done.status == "succeeded" and acme_report is not None
    assert "acme-zephyr" in {c.doc_id for c in acme_report.citations}  # the control: the task finds it

    probe("job report", "globex job with the same task")
    job, _ = jobs.submit(backends, "globex", jobs.JobRequest(task=TASK))
    done = run_steps(backends, job.id)
    report = backends.reports.get(job.id)
    assert done.status == "succeeded", done.error
    assert report is not None and report.citations
    assert "acme-zephyr" not in {c.doc_id for c in report.citations}
    assert "41 dollars" not in report.markdown and "14 March" not in report.markdown
    checkpoint = backends.checkpoints.get(job.id, done.step)
    assert checkpoint is not None
    state = AgentState.model_validate(checkpoint.state)
    assert {c.scope for c in state.sources.values()} <= {"globex", "shared"}
    assert "41 dollars" not in json.dumps(state.messages)  # not even a search snippet reached the model
    text = world.get(f"/api/jobs/{job.id}/report", headers={**key("globex-sub"), "Accept": "text/markdown"}).text
    assert "Zephyr merger closes" not in text


def test_read_document_refuses_a_chunk_outside_the_jobs_scopes(world: TestClient, backends: Backends) -> None:
    toolbox = Toolbox(index=backends.index, allowed=["read_document", "search_knowledge"], scopes=["globex", "shared"])
    state = AgentState(task="t", language="en")
    for args in ({"doc_id": "acme-zephyr"}, {"doc_id": "acme-zephyr", "chunk_id": 0}):
        probe("agent tools", f"read_document {args}")
        with pytest.raises(ToolRefused, match="no document 'acme-zephyr'"):
            toolbox.run("read_document", json.dumps(args), state)
    assert state.sources == {}
    for query in QUERIES:
        probe("agent tools", f"search_knowledge {query}")
        found = json.loads(toolbox.run("search_knowledge", json.dumps({"query": query, "top": 10}), state))
        assert "acme-zephyr" not in {r["doc_id"] for r in found["results"]}
    shared = json.loads(toolbox.run("read_document", json.dumps({"doc_id": "merger-handbook"}), state))
    assert shared["chunks"]  # the control: the job reads shared documents


# --- migration, backup and restore ----------------------------------------------------------------


@pytest.fixture
def legacy_data(app_env: dict[str, str], tenants: None) -> None:
    """A DATA_DIR from before scopes: an index file without the scope column."""
    path = Path(app_env["DATA_DIR"]) / "search.sqlite3"
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE chunks (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, doc_id TEXT NOT NULL, "
        "chunk_id INTEGER NOT NULL, title TEXT NOT NULL, url TEXT, content TEXT NOT NULL, section TEXT, "
        "page INTEGER, version TEXT)"
    )
    db.execute(
        "CREATE VIRTUAL TABLE chunks_terms USING fts5 (title, content, tokenize = 'unicode61 remove_diacritics 0')"
    )
    db.execute(
        "INSERT INTO chunks (id, key, doc_id, chunk_id, title, content) "
        "VALUES (1, 'old-guide--c0000', 'old-guide', 0, 'Old guide', 'Tidal reports are due weekly.')"
    )
    db.execute(
        "INSERT INTO chunks_terms (rowid, title, content) VALUES (1, 'old guide', 'tidal reports are due weekly')"
    )
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()


def test_an_unscoped_index_and_records_become_shared(legacy_data: None, backends: Backends, api: TestClient) -> None:
    record = {"id": "old-guide", "title": "Old guide", "scope": None, "version": "v1", "chunks": 1}
    backends.objects.put(document_key("old-guide"), json.dumps(record).encode())
    assert [c.scope for c in backends.index.get_chunks("old-guide")] == ["shared"]
    for name in ("acme-sub", "globex-sub"):
        hits = api.get("/api/search", params={"q": "tidal reports"}, headers=key(name)).json()
        assert [(h["doc_id"], h["scope"]) for h in hits] == [("old-guide", "shared")]
    assert api.get("/api/documents/old-guide", headers=key("globex-op")).json()["scope"] == "shared"


def test_backup_and_restore_keep_every_chunks_scope(world: TestClient, backends: Backends) -> None:
    before = {(c.key, c.scope) for c in backends.index.export(size=10_000)}
    assert {scope for _, scope in before} == {"acme", "globex", "shared"}
    manifest = backup.run_backup(backends)
    assert manifest.scoped
    backends.index.reset()
    result = backup.restore(backends, manifest.id)
    assert result.verified
    assert {(c.key, c.scope) for c in backends.index.export(size=10_000)} == before
    probe("after restore", "globex-sub search")
    hits = world.get("/api/search", params={"q": "Zephyr merger"}, headers=key("globex-sub")).json()
    assert "acme-zephyr" not in doc_ids(hits)
    probe("after restore", "globex-sub chunk read")
    assert world.get("/api/documents/acme-zephyr/chunks/0", headers=key("globex-sub")).status_code == 404


def test_a_backup_from_before_scopes_restores_as_shared(backends: Backends) -> None:
    knowledge.index_documents(backends, [Document(id="old", title="Old", content="Tides turn twice daily.")])
    manifest = backup.run_backup(backends)
    _strip_scopes(backends, manifest)
    backends.index.reset()
    result = backup.restore(backends, manifest.id)
    assert result.verified
    assert [c.scope for c in backends.index.get_chunks("old")] == ["shared"]


def _strip_scopes(b: Backends, manifest: backup.BackupManifest) -> None:
    """Rewrite a backup as one written before scopes: chunk lines and manifest without the scope field."""
    import hashlib

    prefix = f"backups/{manifest.id}/"
    digest = hashlib.sha256()
    files = []
    for entry in manifest.files:
        if entry.name.startswith("index/chunks-"):
            found = b.objects.get(prefix + entry.name)
            assert found is not None
            lines = [
                Chunk.model_validate_json(line).model_dump_json(exclude={"scope"})
                for line in found.data.decode().split("\n")[:-1]
            ]
            assert all('"scope"' not in line for line in lines)
            data = "".join(f"{line}\n" for line in lines).encode()
            digest.update(data)
            b.objects.put(prefix + entry.name, data)
            entry = entry.model_copy(update={"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        files.append(entry)
    old = manifest.model_copy(update={"files": files, "index_sha256": digest.hexdigest()})
    raw = json.loads(old.model_dump_json())
    del raw["scoped"]
    b.objects.put(prefix + "manifest.json", json.dumps(raw).encode())
