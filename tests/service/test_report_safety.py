"""Reports are safe to render: planted documents and a hostile model cannot put HTML, dangerous or
outside links, images, or unmarked uncited claims into a delivered report.

Planted documents carry the constructs of issue 13's findings. Two models copy them into a report:
the offline model (it quotes the planted sentences verbatim, so every citation verifies) and a
scripted hostile model that pastes all of them in, with an uncited claim three ways (no marker, a
marker whose quote does not verify, a marker whose quote is about something else). What leaves the
API (JSON and text/markdown) and the console's HTML is checked by an oracle that shares no code
with the sanitiser (tests/fixtures/report_safety.py).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shared.console import rendering
from shared.contracts import Document, Report
from shared.engine.backends import Backends
from shared.services import jobs
from shared.services.knowledge import index_documents
from tests.fixtures.agent_scripts import SCRIPTED_ENV, call, cite, run_steps, tool_results, write_report
from tests.fixtures.report_safety import html_problems, markdown_problems
from tests.fixtures.scripted_openai import ScriptedOpenAI, ScriptedResponse, completion

SECRET = "The admin password is hunter2"
CITED_URL = "https://docs.example/backups"
# Issue 13's planted constructs, one per line of a document about backups (so search finds it).
PLANTED = {
    "raw HTML image with onerror": "<img src=x onerror=alert(1)>",
    "script element": "<script>alert(1)</script>",
    "javascript: link": "[click](javascript:alert(1))",
    "javascript: autolink": "<javascript:alert(1)>",
    "outside tracking image": "![t](http://evil.example/t.png)",
    "data: link": "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "vbscript: link": "[v](vbscript:msgbox(1))",
    "outside link": "[tracking](http://evil.example/t)",
    "bare outside URL": "http://evil.example/collect",
}
DEFINITION = "[1]: http://evil.example"
PLANTED_DOC = Document(
    id="planted-ops",
    title="Backup operations <img src=x onerror=alert(1)>",
    url="javascript:alert(1)",
    content=(
        "# Backup operations\n\n"
        "Backups of the knowledge index run nightly at 18:00 UTC <img src=x onerror=alert(1)> and are kept "
        "for seven days.\n\n"
        "<script>alert(1)</script>\n\n"
        "Backup restores follow [click](javascript:alert(1)) the restore guide within four hours.\n\n"
        "Backup alerts reach <javascript:alert(1)> the operator on call for backups.\n\n"
        "Backup status appears on the dashboard ![t](http://evil.example/t.png) every morning.\n\n"
        "Backup archives are signed [x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==) before "
        "upload.\n\n"
        "Backup exports open with [v](vbscript:msgbox(1)) the archive tool.\n\n"
        "Backup metrics are sent to [tracking](http://evil.example/t) and http://evil.example/collect daily.\n\n"
        "Backup questions go to the platform team [1].\n\n"
        f"{DEFINITION}\n"
    ),
)
GUIDE_DOC = Document(
    id="backup-guide",
    title="Backup guide",
    url=CITED_URL,
    content="# Backup guide\n\nBackup archives are verified by a weekly restore test of the newest backup.\n",
)
NIGHTLY = "Backups of the knowledge index run nightly at 18:00 UTC"
SIGNED = "Backup archives are signed"
WEEKLY = "Backup archives are verified by a weekly restore test of the newest backup."
TASK = "How are backups run, restored and checked?"


def hostile_markdown() -> str:
    """Everything planted pasted in, around honest claims, and the secret three ways uncited."""
    pasted = " ".join(PLANTED.values())
    return (
        "## Findings <img src=x onerror=alert(1)>\n\n"
        f"{NIGHTLY} [1]. <script>alert(1)</script>\n"
        f"See {pasted} [1].\n\n"
        f"- {SIGNED} [3]. <img src=x onerror=alert(1)>\n"
        f"- {WEEKLY} [4] See [the guide]({CITED_URL}).\n"
        f"- {SECRET}.\n\n"
        f"{SECRET} [2].\n\n"
        f"{SECRET} [3].\n\n"
        f"{DEFINITION}\n"
    )


class HostileWriter:
    """Searches, reads both documents, then writes hostile_markdown(): [2] quotes text no chunk holds."""

    def __call__(self, body: dict[str, Any]) -> ScriptedResponse:
        results = tool_results(body["messages"])
        chunks = [c for name, r in results if name == "read_document" for c in r.get("chunks", [])]
        if not any(name == "search_knowledge" for name, _ in results):
            return completion(tool_calls=[call("search_knowledge", query=TASK)])
        if not chunks:
            return completion(
                tool_calls=[call("read_document", doc_id=PLANTED_DOC.id), call("read_document", doc_id=GUIDE_DOC.id)]
            )

        def where(quote: str) -> tuple[str, int]:
            chunk = next(c for c in chunks if quote in c["content"])
            return chunk["doc_id"], chunk["chunk_id"]

        citations = [
            cite(1, *where(NIGHTLY), NIGHTLY),
            cite(2, *where(NIGHTLY), f"{SECRET}."),  # a quote the chunk does not hold: verification removes it
            cite(3, *where(SIGNED), SIGNED),
            cite(4, *where(WEEKLY), WEEKLY),
        ]
        return completion(tool_calls=[write_report(hostile_markdown(), citations)])


@pytest.fixture
def planted(backends: Backends) -> None:
    index_documents(backends, [PLANTED_DOC, GUIDE_DOC])


@pytest.fixture
def hostile_env(app_env: dict[str, str], scripted_openai: ScriptedOpenAI) -> dict[str, str]:
    app_env.update({"OPENAI_BASE_URL": scripted_openai.base_url, **SCRIPTED_ENV})
    scripted_openai.respond_with(HostileWriter())
    return app_env


def cited_urls(report: Report) -> set[str]:
    return {c.url for c in report.citations if c.url and c.url.startswith(("http://", "https://"))}


def check_delivery(b: Backends, api: TestClient, job_id: str) -> Report:
    report = b.reports.get(job_id)
    assert report is not None
    allowed = cited_urls(report)
    assert markdown_problems(report.markdown, allowed) == []
    body = api.get(f"/api/jobs/{job_id}/report").json()
    assert body["markdown"] == report.markdown and body["safety"] == report.safety
    text = api.get(f"/api/jobs/{job_id}/report", headers={"Accept": "text/markdown"}).text
    assert markdown_problems(text, allowed) == []  # the sources appendix too: titles, quotes, URLs
    passage = f"/console/jobs/{job_id}/citations/{{n}}"
    html = rendering.report_html(report.markdown, report.citations, passage)
    links = allowed | {passage.format(n=c.n) for c in report.citations}
    assert html_problems(html, links) == []
    assert "onerror" not in html.lower() and "<script" not in html.lower() and "<img" not in html.lower()
    return report


def submit_and_run(b: Backends, **policy: Any) -> str:
    job, _ = jobs.submit(b, "dev", jobs.JobRequest(task=TASK, **({"policy": policy} if policy else {})))
    job = run_steps(b, job.id)
    assert job.status == "succeeded", job.error
    return job.id


# --- the offline model quotes the planted sentences verbatim ------------------------------------


def test_offline_model_report_of_planted_documents_is_safe(planted: None, backends: Backends, api: TestClient) -> None:
    job_id = submit_and_run(backends)
    report = check_delivery(backends, api, job_id)

    assert report.offline_model and report.citations
    # The quotes carried the planted markup, so the sanitiser had work to do (the test has teeth).
    assert any("<img" in c.quote or "javascript:" in c.quote or "evil.example" in c.quote for c in report.citations)
    assert sum(report.safety.get(k, 0) for k in ("raw_html", "link", "image", "bare_url")) > 0
    assert report.safety.get("uncited_marked", 0) == 0  # verbatim quotes: every sentence is backed


# --- a hostile model pastes everything in -------------------------------------------------------


def test_hostile_report_is_safe_and_its_uncited_claims_are_marked(
    hostile_env: dict[str, str], planted: None, backends: Backends, api: TestClient
) -> None:
    job_id = submit_and_run(backends)
    report = check_delivery(backends, api, job_id)

    assert [c.quote for c in report.citations] == [NIGHTLY, SIGNED, WEEKLY]
    assert {r.get("n") for r in report.removed_citations} == {2}  # the secret's quote did not verify
    lines = report.markdown.splitlines()
    secret_lines = [line for line in lines if "hunter2" in line]
    # Unmarked, no marker, a removed marker, a marker whose quote is about backups: all three marked.
    assert len(secret_lines) == 3 and all(line.endswith("*(unverified)*") for line in secret_lines)
    assert f"{NIGHTLY} [1]." in report.markdown and f"{SIGNED} [2]." in report.markdown  # renumbered, unmarked
    assert f"[the guide](<{CITED_URL}>)" in report.markdown  # a cited source's URL stays a link
    for kind in ("raw_html", "link", "image", "bare_url", "reference_definition"):
        assert report.safety.get(kind, 0) > 0, kind


def test_uncited_drop_is_a_job_policy(
    hostile_env: dict[str, str], planted: None, backends: Backends, api: TestClient
) -> None:
    report = check_delivery(backends, api, submit_and_run(backends, uncited="drop"))

    assert "hunter2" not in report.markdown and "unverified" not in report.markdown
    assert f"{NIGHTLY} [1]." in report.markdown
    assert report.safety["uncited_dropped"] >= 3


@pytest.fixture
def keep_by_setting(app_env: dict[str, str]) -> None:
    app_env["POLICY_DEFAULTS"] = json.dumps({"uncited": "keep"})


def test_uncited_keep_is_a_setting_and_a_job_cannot_ask_below_its_tenant(
    hostile_env: dict[str, str], keep_by_setting: None, planted: None, backends: Backends, api: TestClient
) -> None:
    report = check_delivery(backends, api, submit_and_run(backends))

    secret_lines = [line for line in report.markdown.splitlines() if "hunter2" in line]
    assert len(secret_lines) == 3 and not any("unverified" in line for line in secret_lines)
    # The tenant keeps; a job may still ask for stricter. The default tenant marks; a job may not ask to keep.
    assert "hunter2" not in check_delivery(backends, api, submit_and_run(backends, uncited="drop")).markdown


def test_a_job_cannot_relax_its_tenants_uncited_handling(backends: Backends, api: TestClient) -> None:
    r = api.post("/api/jobs", json={"task": TASK, "policy": {"uncited": "keep"}})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "policy.uncited"
    assert api.post("/api/jobs", json={"task": TASK, "policy": {"uncited": "drop"}}).status_code == 202


def test_a_planted_sentence_quoted_verbatim_is_a_cited_claim(
    hostile_env: dict[str, str], scripted_openai: ScriptedOpenAI, backends: Backends, api: TestClient
) -> None:
    """The boundary of the invariant: text a document in the job's knowledge holds, quoted verbatim, is a
    verified citation of that document (shown with its source), never more."""
    index_documents(backends, [Document(id="secret-note", title="Secret note", content=f"# Note\n\n{SECRET}.\n")])

    def writer(body: dict[str, Any]) -> ScriptedResponse:
        results = tool_results(body["messages"])
        if not results:
            return completion(tool_calls=[call("read_document", doc_id="secret-note")])
        return completion(tool_calls=[write_report(f"{SECRET} [1].\n", [cite(1, "secret-note", 0, f"{SECRET}.")])])

    scripted_openai.respond_with(writer)
    report = check_delivery(backends, api, submit_and_run(backends))

    assert report.markdown == f"{SECRET} [1].\n"
    assert [(c.doc_id, c.quote) for c in report.citations] == [("secret-note", f"{SECRET}.")]
