"""Money next to tokens: job views, the admin usage API, the weekly report, and budgets in currency."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from shared.contracts import Usage, utcnow
from shared.engine.backends import Backends
from shared.engine.pricing import cost_of
from shared.maintenance import checks
from shared.services import jobs
from shared.settings import ModelPrice
from tests.fixtures.agent_scripts import run_steps
from tests.fixtures.app import ingest_samples

# Deliberately large rates, so a few thousand tokens cost a visible amount.
PRICE = {"prompt": 100.0, "cached_prompt": 50.0, "completion": 400.0}


@pytest.fixture
def priced(app_env: dict[str, str]) -> dict[str, str]:
    app_env["MODEL_PRICES"] = json.dumps({"offline-extractive": PRICE})
    app_env["PRICE_CURRENCY"] = "EUR"
    return app_env


def run_job(b: Backends, tenant: str = "dev", task: str = "How does the sweep handle dead-lettered messages?") -> str:
    job, _ = jobs.submit(b, tenant, jobs.JobRequest(task=task))
    assert run_steps(b, job.id).status == "succeeded"
    return job.id


def expected(usage: dict[str, int] | Usage) -> float:
    u = usage if isinstance(usage, Usage) else Usage.model_validate(usage)
    return cost_of(u, ModelPrice(**PRICE))


def test_a_job_usage_tenant_and_report_carry_cost(priced: dict[str, str], backends: Backends, api: TestClient) -> None:
    ingest_samples(backends)
    job_id = run_job(backends)

    job = api.get(f"/api/jobs/{job_id}").json()
    assert job["cost"]["currency"] == "EUR" and job["cost"]["model"] == "offline-extractive"
    assert job["cost"]["amount"] == pytest.approx(expected(job["usage"])) and job["cost"]["amount"] > 0

    usage = api.get("/api/admin/usage").json()
    [dev] = [t for t in usage["tenants"] if t["tenant"] == "dev"]
    assert dev["cost"] == pytest.approx(job["cost"]["amount"])
    assert usage["total_cost"] == pytest.approx(dev["cost"]) and usage["currency"] == "EUR"
    assert usage["top_jobs"][0] == {
        "job_id": job_id,
        "tenant": "dev",
        "total_tokens": job["usage"]["prompt_tokens"] + job["usage"]["completion_tokens"],
        "cost": pytest.approx(job["cost"]["amount"]),
    }

    report = checks.build_report(backends, utcnow())
    assert report.cost == pytest.approx(dev["cost"]) and report.currency == "EUR"
    page = checks.render_markdown(report)
    assert f"{dev['cost']:.4f} EUR" in page


def test_without_a_price_cost_is_absent_not_zero(backends: Backends, api: TestClient) -> None:
    ingest_samples(backends)
    job_id = run_job(backends)

    assert api.get(f"/api/jobs/{job_id}").json()["cost"] is None
    usage = api.get("/api/admin/usage").json()
    assert usage["total_cost"] is None and all(t["cost"] is None for t in usage["tenants"])


def test_a_budget_in_currency_refuses_new_jobs_and_stops_running_ones(
    priced: dict[str, str], backends: Backends, api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest_samples(backends)
    first = run_job(backends)
    spent = api.get(f"/api/jobs/{first}").json()["cost"]["amount"]
    running, _ = jobs.submit(backends, "dev", jobs.JobRequest(task="When does cancelling a job take effect?"))
    run_steps(backends, running.id, until=1)

    # Now the tenant's money budget is what it has spent: no new job, and the running one stops at its next step.
    backends.settings.tenant_cost_budgets["dev"] = spent
    refused = api.post("/api/jobs", json={"task": "anything"})
    assert refused.status_code == 429
    assert "budget of" in refused.json()["detail"] and "EUR" in refused.json()["detail"]
    stopped = run_steps(backends, running.id)
    assert stopped.status == "failed" and stopped.error is not None
    assert stopped.error.reason == "budget_exceeded" and "EUR" in stopped.error.detail

    usage = api.get("/api/admin/usage").json()
    [dev] = [t for t in usage["tenants"] if t["tenant"] == "dev"]
    assert dev["cost_budget"] == spent and dev["cost_percent_used"] >= 100
