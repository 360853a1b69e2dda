"""One research job end to end with a real model: the embedded runtime driving a llama.cpp server.

SmolLM2-135M rarely uses tools well, so nothing here depends on what it says. What is asserted must
hold for any model: the job ends (succeeded, or failed with a stated reason), nothing unverified is
ever delivered as a citation, the tokens the job accounts are exactly those the server reported,
and a report says which model wrote it.
"""

from __future__ import annotations

import json

import pytest

from shared.adapters.local.search import LocalKnowledgeIndex
from tests.e2e.test_e2e_runtime import finished
from tests.fixtures.app import ingest_over_http as ingest
from tests.fixtures.app import wait_for
from tests.fixtures.llama_server import MODEL_ALIAS, LlamaServer, UsageTap

pytestmark = pytest.mark.slow

QUESTION = "How does the sweep handle dead-lettered messages?"


def test_a_job_with_a_real_model_ends_honestly(runtime, llama_server: LlamaServer) -> None:  # type: ignore[no-untyped-def]
    with UsageTap(llama_server.base_url.removesuffix("/v1")) as tap:
        rt = runtime(
            {
                "OPENAI_BASE_URL": tap.base_url,
                "OPENAI_MODEL": MODEL_ALIAS,
                "MODEL_TIMEOUT_SECONDS": "60",
                # The server's window is 8192 of its own tokens; our count is an estimate, so stay well inside.
                "CONTEXT_BUDGET_TOKENS": "5000",
                "POLICY_DEFAULTS": json.dumps({"max_steps": 8}),
            }
        )
        with rt.client() as client:
            ingest(client)
            r = client.post("/api/jobs", json={"task": QUESTION})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            job = wait_for(lambda: finished(client, job_id), timeout=150, interval=0.2)
            report = client.get(f"/api/jobs/{job_id}/report")

    assert job["status"] in ("succeeded", "failed"), job
    if job["status"] == "failed":
        assert job["error"]["reason"] and job["error"]["detail"], job["error"]
    assert tap.usages, "the model was never called"
    assert set(tap.models) == {MODEL_ALIAS}
    assert job["usage"]["prompt_tokens"] == tap.total("prompt_tokens")
    assert job["usage"]["completion_tokens"] == tap.total("completion_tokens")

    if report.status_code == 200:
        body = report.json()
        assert body["model"] == f"openai-compatible:{MODEL_ALIAS}" and body["offline_model"] is False
        index = LocalKnowledgeIndex(rt.data_dir / "search.sqlite3")
        for c in body["citations"]:  # whatever the model proposed, only verified quotes are delivered
            [chunk] = index.get_chunks(c["doc_id"], c["chunk_id"])
            assert chunk.content[c["start"] : c["end"]] == c["quote"]
    else:
        assert report.status_code == 404 and job["status"] == "failed", report.text
