"""agentctl docs: ingest folders, files and globs; list, show, delete; re-runs skip what is unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.cli.docs import collect
from tests.fixtures.cli import agentctl, run_cli
from tests.fixtures.documents import PNG_1PX, docx, html_page, pdf, scanned_pdf

pytestmark = pytest.mark.slow


def make_folder(root: Path) -> Path:
    docs = root / "handbook"
    (docs / "pdf").mkdir(parents=True)
    (docs / "pdf" / "dr.pdf").write_bytes(pdf([["Fail over to Osaka."], ["Restore from the newest backup."]]))
    (docs / "t.pdf").write_bytes(pdf([["The t document, as a PDF."]]))
    (docs / "t.html").write_bytes(html_page("T page", "<article><p>The t document, as a page.</p></article>"))
    (docs / "triage.docx").write_bytes(docx([("Heading 1", "Triage"), ("Normal", "Open an incident.")]))
    (docs / "notes.md").write_text("# Notes\n\nThe sweep runs every fifteen minutes.\n", encoding="utf-8")
    (docs / "scan.pdf").write_bytes(scanned_pdf())
    (docs / "logo.md").write_bytes(PNG_1PX)
    (docs / ".git").mkdir()
    (docs / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return docs


def test_collect_walks_folders_files_and_globs(tmp_path: Path) -> None:
    docs = make_folder(tmp_path)
    names = [name for name, _ in collect([str(docs)])]
    assert "handbook/pdf/dr.pdf" in names and "handbook/t.pdf" in names and "handbook/t.html" in names
    assert not any(".git" in n for n in names)
    assert [n for n, _ in collect([str(docs / "**" / "*.pdf")])] == ["pdf/dr.pdf", "scan.pdf", "t.pdf"]
    assert [n for n, _ in collect([str(docs / "notes.md"), str(docs / "notes.md")])] == ["notes.md"]


def test_docs_ingest_list_show_delete(tmp_path: Path) -> None:
    docs = make_folder(tmp_path)
    data_dir = tmp_path / "data"
    first = agentctl("docs", "ingest", str(docs), "--scope", "ops", data_dir=data_dir)
    summary = first["summary"]
    assert (summary["files"], summary["added"], summary["refused"]) == (7, 5, 2)
    assert summary["files_per_second"] > 0 and summary["chunks_written"] >= 5
    refused = {d["name"]: d["reason"] for d in first["documents"] if d["status"] == "refused"}
    assert "no text layer" in refused["handbook/scan.pdf"] and "PNG image" in refused["handbook/logo.md"]

    (docs / "notes.md").write_text("# Notes\n\nThe sweep runs every ten minutes now.\n", encoding="utf-8")
    again = agentctl("docs", "ingest", str(docs), "--scope", "ops", data_dir=data_dir)["summary"]
    assert (again["added"], again["updated"], again["unchanged"], again["refused"]) == (0, 1, 4, 2)

    listed = agentctl("docs", "list", "--scope", "ops", data_dir=data_dir)
    by_name = {d["name"]: d for d in listed}
    assert by_name["handbook/t.pdf"]["id"] != by_name["handbook/t.html"]["id"]
    assert by_name["handbook/pdf/dr.pdf"]["pages"] == 2
    notes = agentctl("docs", "show", by_name["handbook/notes.md"]["id"], data_dir=data_dir)
    assert len(notes["previous_versions"]) == 1 and notes["scope"] == "ops"
    assert agentctl("docs", "list", "--scope", "other", data_dir=data_dir) == []

    gone = agentctl("docs", "delete", notes["id"], data_dir=data_dir)
    assert gone["chunks_removed"] >= 1
    missing = run_cli("docs", "show", notes["id"], data_dir=data_dir)
    assert missing.code == 2 and missing.data["error"]["kind"] == "not-found"

    text = run_cli("docs", "ingest", str(docs), "--scope", "ops", data_dir=data_dir, json_output=False)
    assert text.code == 0 and "1 added" in text.stdout and "refused: 2" in text.stdout
    assert "files/s" in text.stdout


def test_docs_ingest_queue_submits_an_ingestion_job(tmp_path: Path) -> None:
    docs = make_folder(tmp_path)
    data_dir = tmp_path / "data"
    job = agentctl("docs", "ingest", str(docs / "*.md"), "--queue", data_dir=data_dir)
    assert job["status"] == "queued" and job["files"] == 2
    shown = agentctl("docs", "ingestion", job["id"], data_dir=data_dir)
    assert shown["id"] == job["id"]
    assert agentctl("queue", "status", data_dir=data_dir)["active"] == 1
    missing = run_cli("docs", "ingest", str(tmp_path / "nowhere"), data_dir=data_dir)
    assert missing.code != 0 and "no such file" in missing.stderr + missing.stdout


def test_docs_scope_owns_what_is_ingested_searched_shown_and_deleted(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "plan.md").write_text("# Plan\n\nAcme fails over to Osaka.\n", encoding="utf-8")
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "dr.md").write_text("# DR\n\nEvery tenant fails over within an hour.\n", encoding="utf-8")
    agentctl("docs", "ingest", str(tmp_path / "acme"), "--scope", "acme", data_dir=data_dir)
    agentctl("docs", "ingest", str(tmp_path / "common"), data_dir=data_dir)  # no scope: shared

    def hits(scope: str) -> set[tuple[str, str]]:
        found = agentctl("docs", "search", "fails over", "--scope", scope, data_dir=data_dir)
        return {(h["title"], h["scope"]) for h in found}

    assert hits("acme") == {("Plan", "acme"), ("DR", "shared")}
    assert hits("globex") == {("DR", "shared")}  # acme's plan is not globex's to retrieve
    [plan] = agentctl("docs", "list", "--scope", "acme", data_dir=data_dir)
    assert plan["scope"] == "acme"
    other = run_cli("docs", "delete", plan["id"], "--scope", "globex", data_dir=data_dir)
    assert other.code == 2 and other.data["error"]["kind"] == "not-found"
    assert agentctl("docs", "show", plan["id"], "--scope", "acme", data_dir=data_dir)["id"] == plan["id"]
    bad = run_cli("docs", "search", "x", "--scope", "a b", data_dir=data_dir)
    assert bad.code != 0
