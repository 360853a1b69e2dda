"""Every finished job stores its provenance: model, prompt version, policy, versions read, checks, costs."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from shared.engine import provenance
from shared.engine.backends import Backends
from shared.services import jobs
from tests.fixtures.agent_scripts import SCRIPTED_ENV, call, cite, quote_from, run_steps, write_report
from tests.fixtures.app import ingest_samples
from tests.fixtures.scripted_openai import ScriptedOpenAI, completion


@pytest.fixture
def model_env(app_env: dict[str, str], scripted_openai: ScriptedOpenAI) -> dict[str, str]:
    app_env.update({"OPENAI_BASE_URL": scripted_openai.base_url, **SCRIPTED_ENV})
    return app_env


def submit(b: Backends, task: str = "How is a step committed?", **kw: Any) -> Any:
    job, _ = jobs.submit(b, "dev", jobs.JobRequest(task=task, **kw))
    return job


def test_finished_job_has_a_provenance_record(
    model_env: dict[str, str], backends: Backends, api: TestClient, scripted_openai: ScriptedOpenAI
) -> None:
    ingest_samples(backends)
    real = quote_from(backends, "step-engine", 2)
    version = backends.index.get_chunks("step-engine", 2)[0].version
    markdown = "Failures are classified [1]. Nothing is ever lost [2].\n"
    citations = [cite(1, "step-engine", 2, real), cite(2, "step-engine", 2, "Nothing is ever lost, guaranteed.")]
    scripted_openai.script(
        [
            completion(tool_calls=[call("read_document", doc_id="step-engine", chunk_id=2)], prompt_tokens=200),
            completion(tool_calls=[write_report(markdown, citations)], prompt_tokens=400, completion_tokens=50),
            completion(tool_calls=[write_report(markdown, citations)], prompt_tokens=500, completion_tokens=50),
        ]
    )
    pending = submit(backends)
    assert api.get(f"/api/jobs/{pending.id}/provenance").status_code == 409  # not finished yet
    job = run_steps(backends, pending.id)
    assert job.status == "succeeded"

    r = api.get(f"/api/jobs/{job.id}/provenance")
    assert r.status_code == 200, r.text
    record = r.json()
    assert record["model"] == "openai-compatible:scripted" and record["offline_model"] is False
    assert record["deployment"] == "scripted"
    assert record["prompt_version"] == provenance.prompt_version(job.policy, "en")
    assert record["policy"] == job.policy.model_dump(mode="json")
    assert record["documents"] == [{"doc_id": "step-engine", "versions": [version], "chunks": [2]}]
    assert record["chunks_read"] == 1
    verified = [c for c in record["citations"] if c["outcome"] == "verified"]
    removed = [c for c in record["citations"] if c["outcome"] == "removed"]
    assert [(c["doc_id"], c["chunk_id"], c["version"]) for c in verified] == [("step-engine", 2, version)]
    assert verified[0]["section"]  # the heading the quoted chunk sits under
    assert len(removed) == 1 and "does not occur" in removed[0]["why"]
    assert [s["prompt_tokens"] for s in record["steps"]] == [
        cp.usage.prompt_tokens for cp in backends.checkpoints.all(job.id)
    ]
    assert (
        sum(s["prompt_tokens"] for s in record["steps"]) == record["usage"]["prompt_tokens"] == job.usage.prompt_tokens
    )
    timings = record["timings"]
    assert timings["run_ms"] is not None and timings["run_ms"] >= 0 and timings["steps_ms"] > 0

    # It is behind the API key like the job; a redelivered final step writes the same record again.
    assert api.get(f"/api/jobs/{job.id}/provenance", headers={"X-API-Key": "nobody"}).status_code == 401
    from shared.engine.steps import settle

    settle(backends, job, backends.checkpoints.get(job.id, job.step))
    again = provenance.load(backends.objects, job.id)
    assert again is not None and again.model_dump(mode="json") == record


def test_provenance_prompt_version_follows_the_instructions() -> None:
    from shared.contracts import Policy

    base = provenance.prompt_version(Policy(), "en")
    assert base == provenance.prompt_version(Policy(), "en")
    assert base != provenance.prompt_version(Policy(), "ja")
    assert base != provenance.prompt_version(Policy(allowed_tools=["search_knowledge", "write_report"]), "en")
