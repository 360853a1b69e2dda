"""The operator console in a real browser (Chromium through Playwright) against the embedded runtime.

An operator signs in, sees the overview, follows a job submitted over the API until it finishes
(live, without reloading), opens a cited passage, resubmits a dead-lettered step, backs up and
restores, and signs out. A planted `<img onerror>` and `<script>` in a document never run; a
submitter key cannot sign in; another tenant's operator cannot open the job. Every page is
checked for console errors (a CSP violation is one) and saved as a screenshot under artifacts/.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, expect

from tests.fixtures.app import RuntimeProcess, ingest_over_http, wait_for
from tests.fixtures.scripted_openai import ScriptedOpenAI, error

pytestmark = pytest.mark.slow

ACME_OPERATOR, GLOBEX_OPERATOR, ACME_SUBMITTER = "op-acme-key", "op-globex-key", "sub-acme-key"
PLATFORM_ADMIN = "platform-admin-key"  # backups, restore and uploads into the shared index act on every tenant
KEYS = {
    PLATFORM_ADMIN: {"tenant": "acme", "role": "admin"},
    ACME_OPERATOR: {"tenant": "acme", "role": "operator"},
    GLOBEX_OPERATOR: {"tenant": "globex", "role": "operator"},
    ACME_SUBMITTER: {"tenant": "acme", "role": "submitter"},
}
QUIET_TIMERS = {
    name: "0 0 0 1 1 *"
    for name in ("BACKUP_SCHEDULE", "DLQ_SWEEP_SCHEDULE", "WEEKLY_CHECKS_SCHEDULE", "RETENTION_SCHEDULE")
}
SETTINGS = {
    "API_KEYS": json.dumps(KEYS),
    "CONSOLE_SESSION_SECRET": "browser-test-session-secret",
    "RATE_LIMIT_PER_MINUTE": "100000",
    "LOG_LEVEL": "WARNING",
    **QUIET_TIMERS,
}
QUESTION = "What should the operator do when messages pile up in the dead-letter queue?"
PLANTED = """# Zebra crossing maintenance

Zebra crossings are repainted every spring by the road crew <img src=x onerror="alert('img')">.
The zebra crossing paint is checked after heavy rain <script>alert('script')</script> by the night shift.
"""
PAGES = {
    "overview": "/console/",
    "jobs": "/console/jobs",
    "dead-letters": "/console/dead-letters",
    "knowledge": "/console/knowledge?q=dead+letter",
    "usage": "/console/usage",
    "maintenance": "/console/maintenance",
}


class Watched:
    """What a page did that it must not: dialogs, console errors (CSP violations among them), page errors."""

    def __init__(self, page: Page) -> None:
        self.problems: list[str] = []
        page.on("dialog", self._dialog)
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))

    def _dialog(self, dialog: Dialog) -> None:
        self.problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.problems.append(f"console error: {message.text} ({message.location.get('url')})")


def _ingest(client: httpx.Client, name: str, text: str) -> None:
    response = client.post(
        "/api/documents", params={"filename": name}, content=text.encode(), headers={"Content-Type": "text/markdown"}
    )
    response.raise_for_status()


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    # A little model think time, so a job is still running when its page opens.
    runtime = RuntimeProcess(
        tmp_path_factory.mktemp("console") / "data", {**SETTINGS, "OFFLINE_MODEL_LATENCY_MS": "500"}
    )
    runtime.start()
    try:
        with runtime.client(ACME_OPERATOR) as c:
            ingest_over_http(c)
            _ingest(c, "zebra.md", PLANTED)
        yield runtime
    finally:
        runtime.stop()


def sign_in(page: Page, rt: RuntimeProcess, key: str) -> None:
    page.goto(f"{rt.url}/console/")
    expect(page).to_have_url(re.compile(r"/console/sign-in"))
    page.fill("#key", key)
    page.get_by_role("button", name=re.compile("Sign in|サインイン")).click()


def submit(rt: RuntimeProcess, task: str, key: str = ACME_OPERATOR) -> str:
    with rt.client(key) as c:
        response = c.post("/api/jobs", json={"task": task})
        response.raise_for_status()
        return str(response.json()["id"])


def finished(rt: RuntimeProcess, job_id: str, key: str = ACME_OPERATOR) -> dict:
    with rt.client(key) as c:
        return wait_for(lambda: (j := c.get(f"/api/jobs/{job_id}").json())["status"] not in ("queued", "running") and j)


def test_sign_in_and_see_the_overview(page: Page, rt: RuntimeProcess) -> None:
    watched = Watched(page)
    sign_in(page, rt, ACME_OPERATOR)
    expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
    for dependency in ("queue", "storage", "index", "model"):
        expect(page.locator(f'[data-dependency="{dependency}"]')).to_have_text("up")
    expect(page.locator(".caller")).to_contain_text("tenant acme")
    # Keyboard: the first Tab reaches the skip link, which moves focus to the content.
    page.keyboard.press("Tab")
    expect(page.locator("a.skip")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()
    assert watched.problems == []


def test_a_job_submitted_over_the_api_finishes_live_and_its_citation_opens_the_passage(
    page: Page, rt: RuntimeProcess, artifacts: Path
) -> None:
    watched = Watched(page)
    sign_in(page, rt, ACME_OPERATOR)
    job_id = submit(rt, "What should the operator do when messages pile up in the dead-letter queue?")
    page.goto(f"{rt.url}/console/jobs/{job_id}")
    live = page.locator("#job-live")
    assert live.get_attribute("data-status") in ("queued", "running")  # opened while it runs
    expect(page.locator("#job-live")).to_have_attribute("data-status", "succeeded", timeout=60_000)
    expect(page.locator("#steps tbody tr")).not_to_have_count(0)
    cites = page.locator("#report a.cite")
    expect(cites.first).to_be_visible()
    page.screenshot(path=artifacts / "job.png", full_page=True)
    quote = page.locator("#sources li").first.inner_text()
    cites.first.click()
    expect(page).to_have_url(re.compile(rf"/console/jobs/{job_id}/citations/\d+$"))
    quoted = page.locator("mark#quoted").inner_text()
    assert quoted and quoted in quote
    page.screenshot(path=artifacts / "citation.png", full_page=True)
    # The job is in the table, found by text in its task.
    page.goto(f"{rt.url}/console/jobs?text=pile+up")
    expect(page.locator(f'table.jobs a[href="/console/jobs/{job_id}"]')).to_be_visible()
    assert watched.problems == []


def test_a_job_waiting_for_approval_is_approved_from_its_page_and_finishes_live(
    page: Page, rt: RuntimeProcess, artifacts: Path
) -> None:
    watched = Watched(page)
    sign_in(page, rt, ACME_OPERATOR)
    with rt.client(ACME_OPERATOR) as c:
        response = c.post("/api/jobs", json={"task": QUESTION, "policy": {"approval": "before_report"}})
        response.raise_for_status()
        job_id = str(response.json()["id"])
    page.goto(f"{rt.url}/console/jobs/{job_id}")
    # The page follows the durable events stream to the approval, without a reload.
    expect(page.locator("#job-live")).to_have_attribute("data-status", "waiting_for_approval", timeout=60_000)
    expect(page.locator('#job-events li[data-type="waiting_for_approval"]')).to_have_count(1)
    page.fill("#approval-form textarea[name=comment]", "cite the runbook")
    page.screenshot(path=artifacts / "job-approval.png", full_page=True)
    page.get_by_role("button", name="Approve").click()
    expect(page.locator("#confirm-text")).to_contain_text(f"Approve job {job_id}")
    page.get_by_role("button", name="Yes, do it").click()
    expect(page).to_have_url(re.compile(rf"/console/jobs/{job_id}\?done=approve$"))
    expect(page.locator("#job-live")).to_have_attribute("data-status", "succeeded", timeout=60_000)
    expect(page.locator('#job-events li[data-type="approved"]')).to_have_count(1)
    expect(page.locator("#approvals")).to_contain_text("cite the runbook")
    assert watched.problems == []


def test_a_planted_script_in_a_document_never_runs(page: Page, rt: RuntimeProcess, artifacts: Path) -> None:
    watched = Watched(page)
    sign_in(page, rt, ACME_OPERATOR)
    job_id = submit(rt, "When are zebra crossings repainted and when is the zebra crossing paint checked?")
    assert finished(rt, job_id)["status"] == "succeeded"
    page.goto(f"{rt.url}/console/jobs/{job_id}")
    report = page.locator("#report")
    expect(report).to_contain_text("Zebra")
    assert page.locator("#job-live img, #job-live script").count() == 0
    shown = page.locator("#job-live").inner_text()
    assert "onerror" in shown or "<script>" in shown  # the planted markup is shown as text, not run
    page.locator("#report a.cite").first.click()
    expect(page.locator("mark#quoted")).to_be_visible()
    page.goto(f"{rt.url}/console/knowledge?q=zebra+crossing")
    expect(page.locator("#hits")).to_contain_text("zebra")
    assert page.locator("main img, main script").count() == 0
    page.screenshot(path=artifacts / "planted.png", full_page=True)
    assert watched.problems == []


def test_back_up_and_restore_from_the_console(page: Page, rt: RuntimeProcess, artifacts: Path) -> None:
    watched = Watched(page)
    sign_in(page, rt, PLATFORM_ADMIN)
    page.goto(f"{rt.url}/console/maintenance")
    page.locator("#run-backup").click()
    expect(page.locator("#confirm-text")).to_contain_text("new backup")
    page.get_by_role("button", name="Yes, do it").click()
    backup_id = page.locator("#backup-id").inner_text()
    assert re.fullmatch(r"\d{8}T\d{6}Z(-\d+)?", backup_id)
    page.goto(f"{rt.url}/console/maintenance")
    page.locator(f'#backups a[href$="backup_id={backup_id}"]').click()
    with rt.client(ACME_OPERATOR) as c:
        chunks = c.get("/api/health").json()["dependencies"]["index"]["detail"]["chunks"]
    confirmation = page.locator("#confirm-text")
    expect(confirmation).to_contain_text(f"Restore backup {backup_id}")
    expect(confirmation).to_contain_text(f"live knowledge index ({chunks} chunks) will be replaced")
    page.screenshot(path=artifacts / "restore-confirm.png", full_page=True)
    page.get_by_role("button", name="Yes, do it").click()
    expect(page.locator("#outcome")).to_contain_text("verified")
    assert watched.problems == []


def test_a_document_uploaded_from_the_console_is_indexed(page: Page, rt: RuntimeProcess, tmp_path: Path) -> None:
    watched = Watched(page)
    note = tmp_path / "upload-note.md"
    note.write_text("# Upload note\n\nThe night shift checks the backup log every morning.\n", encoding="utf-8")
    sign_in(page, rt, PLATFORM_ADMIN)
    page.goto(f"{rt.url}/console/knowledge")
    page.set_input_files("#files", str(note))
    page.locator("#upload-form").get_by_role("button", name="Upload").click()
    expect(page.locator("#documents")).to_contain_text("upload-note", timeout=15_000)  # after the page reloads
    page.goto(f"{rt.url}/console/knowledge?q=night+shift+backup+log")
    expect(page.locator("#hits li").first).to_contain_text("upload-note")
    assert watched.problems == []


def test_every_page_is_one_click_from_the_overview(page: Page, rt: RuntimeProcess, artifacts: Path) -> None:
    """Runs after the tests above, so the screenshots show a console in use; it adds a job of its own."""
    watched = Watched(page)
    finished(rt, submit(rt, "Which alerts does the runbook define?"))
    sign_in(page, rt, ACME_OPERATOR)
    expect(page.locator("table.jobs tbody tr")).not_to_have_count(0)
    page.screenshot(path=artifacts / "overview.png", full_page=True)
    for name, path in PAGES.items():
        page.goto(f"{rt.url}/console/")
        page.locator(f'header nav a[href="{path.split("?")[0]}"]').click()
        expect(page).to_have_url(re.compile(re.escape(path.split("?")[0]) + r"$"))
        if "?" in path:
            page.goto(f"{rt.url}{path}")
        if name == "usage":  # the charts are drawn (uPlot, from the page's JSON)
            expect(page.locator('.chart[data-chart="tenants"] canvas')).to_have_count(1)
            expect(page.locator('.chart[data-chart="daily"] canvas')).to_have_count(1)
        page.screenshot(path=artifacts / f"{name}.png", full_page=True)
    # Stuck jobs: a card on the overview links to the read-only scan.
    page.goto(f"{rt.url}/console/")
    page.locator("#stuck-link").click()
    expect(page).to_have_url(re.compile(r"/console/stuck$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Stuck jobs")
    page.screenshot(path=artifacts / "stuck.png", full_page=True)
    assert watched.problems == []


def test_a_submitter_key_cannot_sign_in(page: Page, rt: RuntimeProcess) -> None:
    sign_in(page, rt, ACME_SUBMITTER)
    expect(page.locator("#sign-in-problem")).to_contain_text("needs an operator key")
    page.goto(f"{rt.url}/console/jobs")
    expect(page).to_have_url(re.compile(r"/console/sign-in"))
    sign_in(page, rt, "not-a-key")
    expect(page.locator("#sign-in-problem")).to_contain_text("not valid")


def test_another_tenants_operator_cannot_open_the_job(page: Page, rt: RuntimeProcess) -> None:
    job_id = submit(rt, "How is a backup restored?")
    sign_in(page, rt, GLOBEX_OPERATOR)
    expect(page.locator(".caller")).to_contain_text("tenant globex")
    response = page.goto(f"{rt.url}/console/jobs/{job_id}")
    assert response is not None and response.status == 404
    page.goto(f"{rt.url}/console/jobs")
    expect(page.locator(f'a[href="/console/jobs/{job_id}"]')).to_have_count(0)
    response = page.goto(f"{rt.url}/console/jobs?tenant=acme")  # the filter cannot widen the scope
    expect(page.locator(f'a[href="/console/jobs/{job_id}"]')).to_have_count(0)


def test_sign_out_ends_the_session(page: Page, rt: RuntimeProcess) -> None:
    sign_in(page, rt, ACME_OPERATOR)
    expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
    cookie = next(c for c in page.context.cookies() if c["name"] == "console_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#sign-in-problem")).to_contain_text("signed out")
    page.goto(f"{rt.url}/console/maintenance")
    expect(page).to_have_url(re.compile(r"/console/sign-in"))


def test_japanese_from_the_browser_and_the_switch(browser: Browser, rt: RuntimeProcess) -> None:
    context = browser.new_context(locale="ja-JP", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        sign_in(page, rt, ACME_OPERATOR)
        expect(page.get_by_role("heading", level=1)).to_have_text("概要")
        page.get_by_role("button", name="English").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
        page.get_by_role("button", name="日本語").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("概要")
    finally:
        context.close()


def test_every_page_is_readable_390_px_wide(browser: Browser, rt: RuntimeProcess, artifacts: Path) -> None:
    context = browser.new_context(locale="en-US", viewport={"width": 390, "height": 844})
    page = context.new_page()
    try:
        watched = Watched(page)
        sign_in(page, rt, ACME_OPERATOR)
        for name, path in PAGES.items():
            page.goto(f"{rt.url}{path}")
            overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, f"{name} is {overflow}px wider than a 390px screen"
            page.screenshot(path=artifacts / f"{name}-390.png", full_page=True)
        assert watched.problems == []
    finally:
        context.close()


def test_a_dead_lettered_step_is_resubmitted_from_the_console(page: Page, tmp_path: Path, artifacts: Path) -> None:
    """The runbook's incident: the model answers 500, the step is dead-lettered; the endpoint is
    fixed (the app restarted on a working model) and the operator resubmits from the console."""
    data_dir = tmp_path / "dlq"
    retries = {"QUEUE_MAX_DELIVERY_COUNT": "2", "STEP_MAX_RETRIES": "0", "DLQ_MAX_RESUBMISSIONS": "1"}
    model = ScriptedOpenAI().start()
    model.respond_with(lambda request: error(500, "the model endpoint is down"))
    broken = {"OPENAI_BASE_URL": model.base_url, "OPENAI_API_KEY": "test", "OPENAI_MODEL": "scripted"}
    rt = RuntimeProcess(data_dir, {**SETTINGS, **retries, **broken}).start()
    try:
        with rt.client(ACME_OPERATOR) as c, rt.client(PLATFORM_ADMIN) as admin:
            ingest_over_http(c)
            job_id = c.post("/api/jobs", json={"task": "How are dead letters handled?"}).json()["id"]
            # The queue's counts cover every tenant: an admin's to read (the operator sees its own dead letters).
            wait_for(lambda: admin.get("/api/admin/queue").json().get("dead_lettered") == 1, 30)
            assert [d["job_id"] for d in c.get("/api/admin/dlq").json()] == [job_id]
        rt.stop()
        port = rt.port
        rt = RuntimeProcess(data_dir, {**SETTINGS, **retries})  # the fix: a working model
        rt.port, rt.url = port, f"http://127.0.0.1:{port}"
        rt.start()
        watched = Watched(page)
        sign_in(page, rt, ACME_OPERATOR)
        expect(page.locator("#queue-dead-lettered")).to_have_text("1")
        page.locator("#queue-dead-lettered").click()
        row = page.locator("#dead-letters tbody tr")
        expect(row).to_have_count(1)
        expect(row).to_contain_text(job_id)
        expect(row).to_contain_text("transient")
        page.screenshot(path=artifacts / "dead-letter.png", full_page=True)
        row.get_by_role("link", name="Resubmit").click()
        expect(page.locator("#confirm-text")).to_contain_text(f"job {job_id}")
        page.get_by_role("button", name="Yes, do it").click()
        expect(page.locator("#outcome .action")).to_have_text("resubmitted")
        page.locator(f'#outcome a[href="/console/jobs/{job_id}"]').click()
        expect(page.locator("#job-live")).to_have_attribute("data-status", "succeeded", timeout=60_000)
        page.goto(f"{rt.url}/console/dead-letters")
        expect(page.locator("#dlq-empty")).to_be_visible()
        assert watched.problems == []
    finally:
        rt.stop()
        model.stop()
