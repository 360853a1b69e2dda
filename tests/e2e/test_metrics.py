"""GET /api/metrics on the embedded runtime: request, step, job and token series after a real job."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.app import SAMPLES, ingest_over_http, wait_for

pytestmark = pytest.mark.slow
SUBMITTER_KEY = "submitter-key"


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """{sample name: [(labels, value)]} from the Prometheus text format."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(series: list[tuple[dict[str, str], float]], **labels: str) -> float:
    return sum(value for have, value in series if all(have.get(k) == v for k, v in labels.items()))


def test_metrics_expose_requests_steps_jobs_and_tokens_after_a_job(runtime) -> None:  # type: ignore[no-untyped-def]
    keys = {
        "dev-local-key": {"tenant": "dev", "role": "admin"},
        SUBMITTER_KEY: {"tenant": "dev", "role": "submitter"},
    }
    rt = runtime({"API_KEYS": json.dumps(keys)})
    with rt.client() as client:
        ingest_over_http(client)
        job_id = client.post("/api/jobs", json={"task": "How are dead-lettered messages handled?"}).json()["id"]
        job = wait_for(lambda: (j := client.get(f"/api/jobs/{job_id}").json())["status"] == "succeeded" and j, 60)
        assert client.get("/api/jobs/no-such-job").status_code == 404

        response = client.get("/api/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        found = samples(response.text)

    requests = found["agent_http_requests_total"]
    assert total(requests, route="/api/jobs", method="POST", status_code="202") == 1
    assert total(requests, route="/api/jobs/{job_id}", method="GET", status_code="404") == 1  # templates, not paths
    assert total(requests, route="/api/documents", method="POST") == len(list(SAMPLES.glob("*.md")))
    assert found["agent_http_duration_milliseconds_count"]

    steps = found["agent_steps_total"]
    assert total(steps) == job["step"]  # every committed step counted once
    assert total(steps, outcome="succeeded") == 1
    assert total(found["agent_jobs_total"], status="succeeded", reason="none") == 1
    assert total(found["agent_job_duration_seconds_count"], status="succeeded") == 1

    tokens = found["agent_tokens_total"]
    assert total(tokens, tenant="dev", kind="prompt") == job["usage"]["prompt_tokens"] > 0
    assert total(tokens, tenant="dev", kind="completion") == job["usage"]["completion_tokens"] > 0
    # The budget alert's input: month-to-date share of the dev tenant's budget, recorded at each
    # step that used tokens and at the final one.
    token_steps = sum(1 for p in job["progress"] if p["tokens"]) + 1
    assert total(found["agent_budget_used_percent_count"], tenant="dev") >= token_steps - 1 > 0


def test_metrics_need_an_admin_key(runtime) -> None:  # type: ignore[no-untyped-def]
    keys = {
        "dev-local-key": {"tenant": "dev", "role": "admin"},
        SUBMITTER_KEY: {"tenant": "dev", "role": "submitter"},
        "operator-key": {"tenant": "dev", "role": "operator"},
    }
    rt = runtime({"API_KEYS": json.dumps(keys)})
    with rt.client(key="") as anonymous, rt.client(SUBMITTER_KEY) as submitter, rt.client("operator-key") as op:
        anonymous.headers.pop("X-API-Key")
        assert anonymous.get("/api/metrics").status_code == 401  # loopback too
        assert submitter.get("/api/metrics").status_code == 403
        assert op.get("/api/metrics").status_code == 403  # the series name every tenant
    with rt.client() as operator:
        assert operator.get("/api/metrics", headers={}).status_code == 200
        bearer = operator.get("/api/metrics", headers={"X-API-Key": "", "Authorization": "Bearer dev-local-key"})
        assert bearer.status_code == 200
