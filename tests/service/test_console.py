"""The operator console without a browser: sign-in, CSRF, tenant scope, headers, safe reports, job search.

The browser-driven walk is tests/e2e/test_console_browser.py; these pin the rules it relies on.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from shared.console import i18n, rendering
from shared.console.pages import safe_next
from shared.contracts import Citation, JobError, Report, utcnow
from shared.engine import job as lifecycle
from shared.engine.backends import Backends
from shared.services import job_search, jobs
from shared.services.jobs import JobRequest

KEYS = {
    "op-acme": {"tenant": "acme", "role": "operator"},
    "op-globex": {"tenant": "globex", "role": "operator"},
    "sub-acme": {"tenant": "acme", "role": "submitter"},
    "platform-key": {"tenant": "platform", "role": "admin"},
}


@pytest.fixture(autouse=True)
def keys(app_env: dict[str, str]) -> None:
    app_env["API_KEYS"] = json.dumps(KEYS)


@pytest.fixture
def client(backends: Backends) -> Iterator[TestClient]:
    from shared.api.app import create_api

    with TestClient(create_api(backends), follow_redirects=False) as c:
        yield c


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def sign_in(client: TestClient, key: str) -> str:
    """Sign in; the signed-in session's CSRF token."""
    form = client.get("/console/sign-in")
    response = client.post("/console/sign-in", data={"key": key, "csrf": csrf_of(form.text), "next": "/console/"})
    assert response.status_code == 303, response.text
    return csrf_of(client.get("/console/jobs").text)


def test_pages_need_a_session_and_send_the_browser_to_sign_in(client: TestClient) -> None:
    response = client.get("/console/jobs?status=failed")
    assert response.status_code == 303
    assert response.headers["location"] == "/console/sign-in?next=%2Fconsole%2Fjobs%3Fstatus%3Dfailed"
    client.cookies.set("console_session", "forged.value.here", path="/console")
    assert client.get("/console/").status_code == 303


def test_sign_in_sets_a_strict_http_only_cookie_and_the_pages_send_a_strict_csp(client: TestClient) -> None:
    form = client.get("/console/sign-in")
    csp = form.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp and form.headers["x-content-type-options"] == "nosniff"
    response = client.post("/console/sign-in", data={"key": "op-acme", "csrf": csrf_of(form.text)})
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert "op-acme" not in cookie  # the key itself never travels in the cookie
    assert response.headers["cache-control"] == "no-store"


def test_a_submitter_key_or_a_wrong_key_cannot_sign_in(client: TestClient) -> None:
    for key, said in (("sub-acme", "needs an operator key"), ("nope", "not valid")):
        form = client.get("/console/sign-in")
        response = client.post("/console/sign-in", data={"key": key, "csrf": csrf_of(form.text)})
        assert response.status_code == 401 and said in response.text
        assert client.get("/console/").status_code == 303


def test_a_form_without_this_sessions_csrf_token_is_refused_and_does_nothing(
    client: TestClient, backends: Backends
) -> None:
    form = client.get("/console/sign-in")
    assert client.post("/console/sign-in", data={"key": "op-acme", "csrf": "guess"}).status_code == 403
    assert client.post("/console/sign-in", data={"key": "op-acme", "csrf": csrf_of(form.text)}).status_code == 303
    job, _ = jobs.submit(backends, "acme", JobRequest(task="What is a dead letter?"))
    refused = client.post(f"/console/jobs/{job.id}/cancel", data={"csrf": csrf_of(form.text)})  # the old token
    assert refused.status_code == 403
    assert backends.jobs.get(job.id).cancel_requested is False  # type: ignore[union-attr]
    done = client.post(f"/console/jobs/{job.id}/cancel", data={"csrf": csrf_of(client.get("/console/").text)})
    assert done.status_code == 303 and backends.jobs.get(job.id).cancel_requested is True  # type: ignore[union-attr]


def test_a_tenant_operator_sees_only_its_tenant(client: TestClient, backends: Backends) -> None:
    acme, _ = jobs.submit(backends, "acme", JobRequest(task="acme's question"))
    globex, _ = jobs.submit(backends, "globex", JobRequest(task="globex's question"))
    csrf = sign_in(client, "op-globex")
    assert client.get(f"/console/jobs/{acme.id}").status_code == 404
    assert client.get(f"/console/jobs/{acme.id}/live").status_code == 404
    assert client.post(f"/console/jobs/{acme.id}/cancel", data={"csrf": csrf}).status_code == 404
    listed = client.get("/console/jobs?tenant=acme").text  # the filter cannot widen the scope
    assert acme.id not in listed and globex.id in listed
    assert acme.id not in client.get("/console/").text
    assert client.get(f"/console/jobs/{globex.id}").status_code == 200


def test_language_follows_the_browser_then_the_switch(client: TestClient) -> None:
    assert "<h1>サインイン</h1>" in client.get("/console/sign-in", headers={"Accept-Language": "ja,en;q=0.5"}).text
    csrf = sign_in(client, "op-acme")
    switched = client.post("/console/language", data={"lang": "en", "csrf": csrf, "next": "https://elsewhere/"})
    assert switched.headers["location"] == "/console/"  # never a redirect out of the console
    assert "<h1>Overview</h1>" in client.get("/console/", headers={"Accept-Language": "ja"}).text


def test_negotiation_and_redirect_targets() -> None:
    assert i18n.negotiate("fr-FR, ja;q=0.8, en;q=0.5", None) == "ja"
    assert i18n.negotiate("en-GB,ja;q=0.9", None) == "en"
    assert i18n.negotiate("de", None) == "en"
    assert i18n.negotiate("en", "ja") == "ja"
    assert i18n.translator("ja")("refreshes", s=10) == "10 秒ごとに更新します。"
    assert all(ja for _, ja in i18n.MESSAGES.values())
    for bad in ("//evil.example/x", "https://evil.example", "/api/admin/dlq", "/console\\..\\x", None):
        assert safe_next(bad) == "/console/"
    assert safe_next("/console/jobs?status=failed") == "/console/jobs?status=failed"


def test_report_html_keeps_no_markup_from_the_text_and_links_only_verified_citations() -> None:
    quote = "Dead letters wait for the sweep."
    citation = Citation(n=1, doc_id="dlq", chunk_id=0, title="DLQ", quote=quote, start=0, end=len(quote))
    markdown = (
        "# Findings\n\nDead letters wait [1]. "
        "Planted <img src=x onerror=alert(1)> and <script>alert(2)</script> [2].\n\n"
        "[click](javascript:alert(3)) ![t](https://tracker.example/p.png) [ok](https://example.org/a) `[1]`\n"
    )
    html = rendering.report_html(markdown, [citation], "/console/jobs/j/citations/{n}")
    assert "<img" not in html and "<script" not in html and 'href="javascript' not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html  # shown as text
    assert html.count('class="cite"') == 1 and 'href="/console/jobs/j/citations/1"' in html
    assert "[2]" in html  # no such citation: left as text
    assert "<code>[1]</code>" in html  # a marker in code stays code
    assert 'rel="noopener noreferrer nofollow"' in html


def test_a_passage_is_highlighted_at_the_verified_offsets_or_found() -> None:
    text = "First sentence. The quoted one. Last."
    good = Citation(n=1, doc_id="d", chunk_id=0, title="t", quote="The quoted one.", start=16, end=31)
    assert rendering.highlighted_passage(text, good) == ("First sentence. ", "The quoted one.", " Last.")
    moved = good.model_copy(update={"start": 0, "end": 15})
    assert rendering.highlighted_passage(text, moved)[1] == "The quoted one."
    gone = good.model_copy(update={"quote": "not there"})
    assert rendering.highlighted_passage(text, gone) == (text, "", "")


def _finished(b: Backends, tenant: str, task: str, status: str, reason: str | None = None) -> str:
    time.sleep(0.002)  # one job per millisecond: newest-first order is by submission time
    job, _ = jobs.submit(b, tenant, JobRequest(task=task))

    def end(j):  # type: ignore[no-untyped-def]
        j.status, j.finished_at = status, utcnow()
        j.error = JobError(reason=reason, detail="test") if reason else None
        return True

    b.jobs.update(job.id, end)
    return job.id


def test_job_search_filters_pages_and_stops_at_its_scan_limit(backends: Backends) -> None:
    ids = [_finished(backends, "acme", f"question {n}", "succeeded") for n in range(5)]
    failed = _finished(backends, "acme", "the Failing one", "failed", "citations_missing")
    other = _finished(backends, "globex", "globex question", "succeeded")
    page = job_search.find_jobs(backends, tenant="acme", limit=3)
    assert [j.id for j in page.jobs] == [failed, ids[4], ids[3]] and page.next_cursor
    rest = job_search.find_jobs(backends, tenant="acme", limit=3, cursor=page.next_cursor)
    assert [j.id for j in rest.jobs] == [ids[2], ids[1], ids[0]]
    assert [j.id for j in job_search.find_jobs(backends, tenant=None, limit=1).jobs] == [other]
    by_reason = job_search.find_jobs(backends, tenant="acme", reason="citations_missing")
    assert [j.id for j in by_reason.jobs] == [failed]
    assert [j.id for j in job_search.find_jobs(backends, tenant="acme", text="failing").jobs] == [failed]
    assert job_search.find_jobs(backends, tenant="acme", status="running").jobs == []
    future = utcnow() + timedelta(hours=1)
    assert job_search.find_jobs(backends, tenant="acme", since=future).examined == 0
    assert job_search.find_jobs(backends, tenant="acme", until=utcnow() - timedelta(hours=1)).jobs == []
    stopped = job_search.find_jobs(backends, tenant="acme", status="running", scan_limit=2)
    assert stopped.scan_stopped and stopped.examined == 2 and stopped.next_cursor
    resumed = job_search.find_jobs(backends, tenant="acme", status="running", cursor=stopped.next_cursor, scan_limit=2)
    assert resumed.examined == 2


def test_window_counts_and_the_error_rate_line(backends: Backends) -> None:
    for n in range(18):
        _finished(backends, "acme", f"ok {n}", "succeeded")
    _finished(backends, "acme", "bad", "failed", "policy_limit")
    _finished(backends, "acme", "bad too", "failed", "policy_limit")
    running, _ = jobs.submit(backends, "acme", JobRequest(task="still going"))
    hour, day = job_search.window_counts(backends, tenant="acme")
    assert hour.by_status == {"queued": 1, "running": 0, "succeeded": 18, "failed": 2, "cancelled": 0}
    assert hour.error_rate == pytest.approx(0.1) and hour.over_line and hour.failure_reasons == {"policy_limit": 2}
    assert day.finished == 20
    backends.jobs.update(running.id, lifecycle.request_cancel)
    assert job_search.window_counts(backends, tenant="globex")[1].finished == 0


def test_every_page_renders_for_an_operator(client: TestClient, backends: Backends) -> None:
    job_id = _finished(backends, "acme", "What is a dead letter?", "succeeded")
    quote = "A dead letter."
    backends.reports.save(
        job_id,
        Report(
            markdown="A finding [1].",
            citations=[Citation(n=1, doc_id="d", chunk_id=0, title="t", quote=quote, start=0, end=len(quote))],
        ),
    )
    sign_in(client, "op-acme")
    for path in (
        "/console/",
        "/console/overview/live",
        "/console/jobs",
        f"/console/jobs/{job_id}",
        f"/console/jobs/{job_id}/citations/1",
        "/console/dead-letters",
        "/console/knowledge?q=dead",
        "/console/usage",
        "/console/maintenance",
    ):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text[:500])
    assert client.get(f"/console/jobs/{job_id}/citations/9").status_code == 404
    platform_wide = ("/console/dead-letters/confirm?action=sweep", "/console/maintenance/confirm?action=backup")
    for path in platform_wide:  # acting on every tenant at once is an admin's
        assert client.get(path).status_code == 403, path
    sign_in(client, "platform-key")
    for path in platform_wide:
        assert client.get(path).status_code == 200, path
    assert client.get("/console/static/vendor/htmx.min.js").status_code == 200


def test_sessions_are_signed_by_the_configured_secret_or_the_api_keys() -> None:
    from shared.console.session import signing_secret
    from shared.errors import ConfigurationError
    from shared.settings import Settings

    assert signing_secret(Settings(CONSOLE_SESSION_SECRET="s3cret")) == "s3cret"
    derived = signing_secret(Settings(API_KEYS=json.dumps(KEYS)))
    assert derived == signing_secret(Settings(API_KEYS=json.dumps(dict(reversed(KEYS.items())))))  # any instance
    assert derived != signing_secret(Settings(API_KEYS=json.dumps({**KEYS, "new-key": {"tenant": "x"}})))
    assert signing_secret(Settings()) == signing_secret(Settings())  # development: one per process
    with pytest.raises(ConfigurationError):
        signing_secret(Settings(APP_ENV="production"))


def test_a_caller_whose_role_is_admin_sees_every_tenant(client: TestClient, backends: Backends) -> None:
    acme, _ = jobs.submit(backends, "acme", JobRequest(task="acme's question"))
    globex, _ = jobs.submit(backends, "globex", JobRequest(task="globex's question"))
    if True:  # the admin key of KEYS, checked by the API's own authentication
        sign_in(client, "platform-key")
        page = client.get("/console/jobs").text
        assert acme.id in page and globex.id in page and "all tenants" in page
        only = client.get("/console/jobs?tenant=globex").text
        assert globex.id in only and acme.id not in only
        assert client.get(f"/console/jobs/{acme.id}").status_code == 200
