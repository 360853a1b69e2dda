"""The console wired to the features that landed after it: durable events, approvals, deep-research
links, money next to tokens, job schedules and webhook deliveries (each tenant-scoped, CSRF-guarded,
confirmed first)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from shared.contracts import Job, Usage, utcnow
from shared.engine import job as lifecycle
from shared.engine import layout, provenance
from shared.engine.backends import Backends
from shared.engine.ledger import month_of
from shared.maintenance import run_scheduled
from shared.services import jobs, knowledge, schedules, webhooks
from shared.services.jobs import JobRequest
from shared.services.schedules import ScheduleRequest
from tests.fixtures.agent_scripts import run_steps
from tests.fixtures.app import ingest_samples
from tests.service.test_console import KEYS, sign_in

PRICE = {"prompt": 2.0, "completion": 8.0}  # per 1M tokens


@pytest.fixture(autouse=True)
def keys(app_env: dict[str, str]) -> None:
    app_env["API_KEYS"] = json.dumps(KEYS)
    app_env["MODEL_PRICES"] = json.dumps({"offline-extractive": PRICE})
    app_env["TENANT_COST_BUDGETS"] = json.dumps({"acme": 10.0})


@pytest.fixture
def client(backends: Backends) -> Iterator[TestClient]:
    from shared.api.app import create_api

    with TestClient(create_api(backends), follow_redirects=False) as c:
        yield c


def _get(b: Backends, job_id: str) -> Job:
    found = b.jobs.get(job_id)
    assert found is not None
    return found


def _waiting(b: Backends, tenant: str = "acme") -> Job:
    job, _ = jobs.submit(b, tenant, JobRequest(task="Delete the old records?"))
    parked = b.jobs.update(job.id, lambda j: lifecycle.park(j, 1, ["delete_records"], utcnow() + timedelta(hours=1)))
    assert parked is not None and parked.status == "waiting_for_approval"
    return parked


def test_the_events_route_pages_the_durable_stream_for_the_session_and_long_polls(
    client: TestClient, backends: Backends
) -> None:
    job, _ = jobs.submit(backends, "acme", JobRequest(task="What is a dead letter?"))
    other, _ = jobs.submit(backends, "globex", JobRequest(task="globex's question"))
    assert client.get(f"/console/jobs/{job.id}/events").status_code == 303  # no session: to sign-in
    sign_in(client, "op-acme")
    first = client.get(f"/console/jobs/{job.id}/events").json()
    assert [e["type"] for e in first["events"]] == ["queued"] and first["next_after"] == 1 and not first["ended"]
    assert client.get(f"/console/jobs/{other.id}/events").status_code == 404
    assert client.get(f"/console/jobs/{job.id}/events?wait=99").status_code == 422

    def fail_soon() -> None:
        time.sleep(0.3)
        backends.jobs.update(job.id, lambda j: lifecycle.end(j, "failed", "tool_error", "the tool broke"))

    threading.Thread(target=fail_soon).start()
    started = time.monotonic()
    waited = client.get(f"/console/jobs/{job.id}/events?after=1&wait=10").json()
    took = time.monotonic() - started
    assert [e["type"] for e in waited["events"]] == ["failed"] and waited["ended"]
    assert 0.2 < took < 5, took  # answered by the write, not by the 10 s timeout


def test_a_waiting_job_is_approved_with_a_comment_after_a_confirmation(client: TestClient, backends: Backends) -> None:
    job = _waiting(backends)
    csrf = sign_in(client, "op-acme")
    page = client.get(f"/console/jobs/{job.id}").text
    assert 'id="approval-form"' in page and "delete_records" in page
    form = {"csrf": csrf, "decision": "approve", "after_step": "1", "comment": "only <b>rows</b> older than 2020"}
    assert client.post(f"/console/jobs/{job.id}/decide", data={**form, "csrf": "forged"}).status_code == 403
    confirm = client.post(f"/console/jobs/{job.id}/decide", data=form)
    assert confirm.status_code == 200 and 'id="confirm-text"' in confirm.text
    assert "&lt;b&gt;rows&lt;/b&gt;" in confirm.text and "<b>rows" not in confirm.text  # escaped
    assert _get(backends, job.id).status == "waiting_for_approval"  # nothing decided before the confirmation
    done = client.post(f"/console/jobs/{job.id}/decide", data={**form, "confirmed": "yes"})
    assert done.status_code == 303 and done.headers["location"] == f"/console/jobs/{job.id}?done=approve"
    decided = _get(backends, job.id).approvals[-1]
    assert decided.decision == "approved" and decided.comment == form["comment"]
    assert decided.decided_by and decided.decided_by.startswith("console:")
    again = client.post(f"/console/jobs/{job.id}/decide", data={**form, "decision": "reject", "confirmed": "yes"})
    assert again.status_code == 409  # the API's rule: a different decision after the first is a conflict


def test_another_tenants_operator_cannot_decide(client: TestClient, backends: Backends) -> None:
    job = _waiting(backends)
    csrf = sign_in(client, "op-globex")
    form = {"csrf": csrf, "decision": "reject", "after_step": "1", "confirmed": "yes"}
    assert client.post(f"/console/jobs/{job.id}/decide", data=form).status_code == 404
    assert _get(backends, job.id).status == "waiting_for_approval"


def test_the_job_page_links_the_research_tree_and_shows_cost_next_to_tokens(
    client: TestClient, backends: Backends
) -> None:
    parent, _ = jobs.submit(backends, "acme", JobRequest(task="The big question"))
    child, _ = jobs.submit(backends, "acme", JobRequest(task="A sub-question"))
    backends.jobs.update(parent.id, lambda j: lifecycle.adopt_children(j, [child.id]))

    def link_and_spend(j: Job) -> bool:
        j.parent_id = parent.id
        j.usage = Usage(prompt_tokens=1_000_000, completion_tokens=500_000)
        return True

    backends.jobs.update(child.id, link_and_spend)
    sign_in(client, "op-acme")
    page = client.get(f"/console/jobs/{parent.id}").text
    assert f'href="/console/jobs/{child.id}"' in page and 'id="sub-jobs"' in page
    page = client.get(f"/console/jobs/{child.id}").text
    assert f'href="/console/jobs/{parent.id}"' in page
    assert "6.000000 USD" in page  # 1M x 2.0 + 0.5M x 8.0


def test_usage_shows_money_by_tenant_and_job_against_the_cost_budget(client: TestClient, backends: Backends) -> None:
    job, _ = jobs.submit(backends, "acme", JobRequest(task="spend"))
    backends.ledger.record(
        "acme", month_of(), job.id, Usage(prompt_tokens=2_000_000, completion_tokens=250_000), step=1
    )
    sign_in(client, "op-acme")
    page = client.get("/console/usage").text
    assert "6.000000" in page  # 2M x 2.0 + 0.25M x 8.0, by tenant and by job
    assert "60.0%" in page  # of the 10.0 cost budget
    assert 'id="total-cost"' in page


def test_schedules_are_paused_resumed_and_deleted_after_a_confirmation(client: TestClient, backends: Backends) -> None:
    mine = schedules.create(backends, "acme", ScheduleRequest(cron="0 0 9 * * 1", task="Weekly digest"))
    theirs = schedules.create(backends, "globex", ScheduleRequest(cron="0 0 9 * * 1", task="globex digest"))
    csrf = sign_in(client, "op-acme")
    page = client.get("/console/maintenance").text
    assert mine.id in page and theirs.id not in page  # a tenant operator sees its own tenant only
    confirm = client.get(f"/console/maintenance/schedules/confirm?action=delete&tenant=acme&id={mine.id}")
    assert confirm.status_code == 200 and mine.id in confirm.text and "0 0 9 * * 1" in confirm.text
    form = {"csrf": csrf, "tenant": "acme", "id": mine.id}
    assert client.post("/console/maintenance/schedules/pause", data={**form, "csrf": "x"}).status_code == 403
    assert client.post("/console/maintenance/schedules/pause", data=form).status_code == 303
    assert schedules.get(backends, "acme", mine.id).paused
    assert client.post("/console/maintenance/schedules/resume", data=form).status_code == 303
    assert not schedules.get(backends, "acme", mine.id).paused
    foreign = {"csrf": csrf, "tenant": "globex", "id": theirs.id}
    assert client.post("/console/maintenance/schedules/delete", data=foreign).status_code == 404
    assert (
        client.get(f"/console/maintenance/schedules/confirm?action=pause&tenant=globex&id={theirs.id}").status_code
        == 404
    )
    assert client.post("/console/maintenance/schedules/delete", data=form).status_code == 303
    assert [s.id for s in schedules.list_schedules(backends)] == [theirs.id]


def _dead_delivery(b: Backends, tenant: str) -> webhooks.Delivery:
    job, _ = jobs.submit(b, tenant, JobRequest(task="notify me"))
    delivery = webhooks.Delivery(
        id=f"{job.id}.succeeded",
        tenant=tenant,
        job_id=job.id,
        event="succeeded",
        url="https://hooks.example.invalid/done",
        body="{}",
        status="dead",
        attempts=[webhooks.Attempt(n=1, at=utcnow(), status_code=500)],
        dead_reason="HTTP 500 after 1 attempt",
    )
    b.objects.put(layout.webhook_key(tenant, delivery.id), delivery.model_dump_json().encode())
    return delivery


def test_a_dead_webhook_delivery_is_redelivered_after_a_confirmation(client: TestClient, backends: Backends) -> None:
    mine, theirs = _dead_delivery(backends, "acme"), _dead_delivery(backends, "globex")
    csrf = sign_in(client, "op-acme")
    page = client.get("/console/maintenance").text
    assert mine.job_id in page and "HTTP 500 after 1 attempt" in page and theirs.job_id not in page
    confirm = client.get(f"/console/maintenance/webhooks/confirm?id={mine.id}")
    assert confirm.status_code == 200 and "hooks.example.invalid/done" in confirm.text
    assert client.get(f"/console/maintenance/webhooks/confirm?id={theirs.id}").status_code == 404
    assert (
        client.post("/console/maintenance/webhooks/redeliver", data={"csrf": csrf, "id": theirs.id}).status_code == 404
    )
    done = client.post("/console/maintenance/webhooks/redeliver", data={"csrf": csrf, "id": mine.id})
    assert done.status_code == 303
    assert webhooks.get_delivery(backends, mine.id).status == "pending"
    assert webhooks.get_delivery(backends, theirs.id).status == "dead"


def test_a_finished_jobs_page_shows_its_provenance(client: TestClient, backends: Backends) -> None:
    ingest_samples(backends)
    pending, _ = jobs.submit(backends, "acme", JobRequest(task="How is a step committed?"))
    job = run_steps(backends, pending.id)
    assert job.finished
    record = provenance.load(backends.objects, job.id)
    assert record is not None
    sign_in(client, "op-acme")
    page = client.get(f"/console/jobs/{job.id}").text
    assert 'id="provenance"' in page and record.prompt_version in page
    for read in record.documents:
        assert f"<code>{read.doc_id}</code>" in page
    running, _ = jobs.submit(backends, "acme", JobRequest(task="still going"))
    assert 'id="provenance"' not in client.get(f"/console/jobs/{running.id}").text


def test_the_knowledge_page_shows_scopes_and_versions(client: TestClient, backends: Backends) -> None:
    knowledge.ingest(backends, [("guide.md", b"# Guide\n\nThe first text.")], scope="acme")
    [second] = knowledge.ingest(backends, [("guide.md", b"# Guide\n\nThe second text.")], scope="acme")
    knowledge.ingest(backends, [("notes.md", b"# Notes\n\nShared text.")])
    [theirs] = knowledge.ingest(backends, [("secret.md", b"# Secret\n\nGlobex text.")], scope="globex")
    record = knowledge.get_document(backends, second.id)
    assert record.version and len(record.previous_versions) == 1
    sign_in(client, "op-acme")
    page = client.get("/console/knowledge").text
    assert record.version[:12] in page and "acme (1)" in page and "shared (1)" in page and "notes" in page
    assert theirs.id not in page and "globex" not in page  # another tenant's documents are not acme's to see
    assert theirs.id not in client.get("/console/knowledge?q=globex+text").text
    narrowed = client.get("/console/knowledge?scope=acme").text
    row = narrowed[narrowed.index('id="documents"') :]
    assert second.id in row and "notes" not in row


def test_stuck_jobs_are_listed_read_only_and_repaired_after_a_confirmation(
    client: TestClient, backends: Backends
) -> None:
    backends.settings.stuck_step_seconds = backends.settings.queue_lock_seconds = 0.01
    mine, _ = jobs.submit(backends, "acme", JobRequest(task="lost step"))
    theirs, _ = jobs.submit(backends, "globex", JobRequest(task="globex's lost step"))
    for m in backends.queue.receive(10):  # type: ignore[attr-defined]
        backends.queue.complete(m)  # type: ignore[attr-defined]  # the first steps vanish unrun
    time.sleep(0.05)
    csrf = sign_in(client, "op-acme")
    page = client.get("/console/stuck").text
    row = page[page.index('id="stuck-jobs"') :]
    assert f'href="/console/jobs/{mine.id}"' in row and theirs.id not in row
    assert _get(backends, mine.id).repairs == 0  # looking repairs nothing
    assert client.get("/console/maintenance/confirm?action=stuck").status_code == 403  # repairs every tenant's
    assert client.post("/console/maintenance/stuck", data={"csrf": csrf}).status_code == 403
    csrf = sign_in(client, "platform-key")
    assert client.get("/console/maintenance/confirm?action=stuck").status_code == 200
    done = client.post("/console/maintenance/stuck", data={"csrf": csrf})
    assert done.status_code == 200 and 'id="outcome"' in done.text
    assert _get(backends, mine.id).repairs == 1 and _get(backends, theirs.id).repairs == 1
    run_scheduled(backends, "stuck_jobs")
    overview = client.get("/console/").text
    assert 'id="stuck-run"' in overview and 'href="/console/stuck"' in overview
