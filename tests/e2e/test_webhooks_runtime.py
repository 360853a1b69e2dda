"""Signed webhooks from the embedded runtime to a receiver on loopback that fails three times, and the
operator's view of them; `agentctl jobs watch` following the job live over HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.app import ingest_over_http, wait_for
from tests.fixtures.cli import run_cli
from tests.fixtures.webhook_receiver import SECRET, Receiver

pytestmark = pytest.mark.slow


def test_receiver_failing_three_times_gets_one_accepted_signed_delivery_per_event(
    runtime, tmp_path: Path, webhook_receiver: Callable[..., Receiver]
) -> None:  # type: ignore[no-untyped-def]
    receiver = webhook_receiver(lambda n: (503, {}, 0.0) if n < 3 else (200, {}, 0.0))
    env = {
        "WEBHOOK_TENANTS": json.dumps({"dev": {"allowed_hosts": ["127.0.0.1"], "secrets": [SECRET]}}),
        "WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
        "WEBHOOK_RETRY_BASE_SECONDS": "0.2",
        "OFFLINE_MODEL_LATENCY_MS": "100",
    }
    data_dir = tmp_path / "hooks"
    rt = runtime(env, data_dir)
    with rt.client() as client:
        ingest_over_http(client)
        r = client.post("/api/jobs", json={"task": "How are dead letters handled?", "callback_url": receiver.url})
        job_id = r.json()["id"]
    watched = run_cli("jobs", "watch", job_id, "--url", rt.url, data_dir=data_dir, json_output=False)
    assert watched.code == 0, watched.stderr
    assert "succeeded" in watched.stdout and "step  1" in watched.stdout and "report ready" in watched.stdout
    # Without --url the same events come from the data directory (what an operator next to the runtime has).
    direct = run_cli("jobs", "watch", job_id, data_dir=data_dir)
    assert direct.code == 0, direct.stderr
    assert [e["type"] for e in direct.data][0] == "queued" and direct.data[-1]["type"] == "succeeded"
    assert [e["id"] for e in direct.data] == list(range(1, len(direct.data) + 1))

    wait_for(lambda: len(receiver.accepted) == 2, timeout=30)
    listed = run_cli("webhooks", "list", data_dir=data_dir, env=env)
    assert listed.code == 0, listed.stderr
    assert {d["event"] for d in listed.data} == {"job.report_ready", "job.succeeded"}
    for d in listed.data:
        assert d["status"] == "delivered" and [a["status_code"] for a in d["attempts"]] == [503, 503, 503, 200]
        tries = [x for x in receiver.requests if x.webhook_id == d["id"]]
        assert len(tries) == 4 and all(x.valid_signature for x in tries)
    assert len(receiver.accepted) == 2  # one accepted delivery per event, however many attempts

    again = run_cli("webhooks", "redeliver", listed.data[0]["id"], data_dir=data_dir, env=env)
    assert again.code == 0, again.stderr
    wait_for(lambda: sum(x.webhook_id == listed.data[0]["id"] for x in receiver.requests) == 5, timeout=30)
    assert len(receiver.accepted) == 2  # the receiver saw a replay of an id it had accepted
