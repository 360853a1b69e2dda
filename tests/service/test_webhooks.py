"""Signed webhooks through the app's own queue function to a receiver on loopback: retries with backoff
and Retry-After, 410, timeouts, dead letters and redelivery, replays, key rotation, and the SSRF checks."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shared.engine.backends import Backends
from shared.runtime.consumer import QueueConsumer
from shared.runtime.functions import discover
from shared.services import webhooks
from shared.services.webhooks import Delivery
from tests.fixtures.app import ingest_samples, wait_for
from tests.fixtures.webhook_receiver import SECRET, Receiver

QUESTION = "How are dead-lettered messages handled?"
NEW_SECRET = "whsec_" + base64.b64encode(b"the-rotated-key-fedcba9876543210").decode()


@pytest.fixture
def hooks_env(app_env: dict[str, str]) -> dict[str, str]:
    app_env.update(
        {
            "WEBHOOK_TENANTS": json.dumps({"dev": {"allowed_hosts": ["127.0.0.1", "localhost"], "secrets": [SECRET]}}),
            "WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
            "WEBHOOK_RETRY_BASE_SECONDS": "0.1",
            "WEBHOOK_MAX_ATTEMPTS": "5",
            "WEBHOOK_TIMEOUT_SECONDS": "0.5",
        }
    )
    return app_env


def fail_then_accept(failures: int, status: int = 500, headers: dict[str, str] | None = None) -> Any:
    return lambda n: (status, headers or {}, 0.0) if n < failures else (204, {}, 0.0)


def run_job(b: Backends, api: TestClient, url: str) -> str:
    ingest_samples(b)
    r = api.post("/api/jobs", json={"task": QUESTION, "callback_url": url})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def settled(b: Backends, job_id: str, count: int = 2, timeout: float = 30) -> list[Delivery]:
    """Run the queue function until the job's deliveries are all delivered or dead."""
    fn = discover("function_app").queues[0]
    consumer = QueueConsumer(b.queue, fn, concurrency=2, max_lock_renewal_seconds=30)  # type: ignore[arg-type]
    consumer.start()
    try:

        def done() -> list[Delivery] | None:
            found = [d for d in webhooks.list_deliveries(b, tenant="dev") if d.job_id == job_id]
            return found if len(found) == count and all(d.status != "pending" for d in found) else None

        return wait_for(done, timeout)  # type: ignore[no-any-return]
    finally:
        consumer.stop()


def test_three_failures_then_one_accepted_signed_delivery_per_event(
    hooks_env: dict[str, str], backends: Backends, api: TestClient, webhook_receiver: Callable[..., Receiver]
) -> None:
    receiver = webhook_receiver(fail_then_accept(3))
    job_id = run_job(backends, api, receiver.url)
    deliveries = settled(backends, job_id)
    assert {d.event for d in deliveries} == {"job.report_ready", "job.succeeded"}
    assert set(receiver.accepted) == {d.id for d in deliveries}
    for d in deliveries:
        assert d.status == "delivered" and [a.status_code for a in d.attempts] == [500, 500, 500, 204]
        tries = [r for r in receiver.requests if r.webhook_id == d.id]
        assert all(r.valid_signature for r in tries) and len({r.body for r in tries}) == 1  # same body each time
        gaps = [b.at - a.at for a, b in zip(tries, tries[1:], strict=False)]
        # Exponential backoff with jitter (half to full of 0.1 s x 2^n): a scheduled retry can come late on a
        # busy machine, never early, so each gap is at least the smallest delay its attempt allows.
        assert [g >= 0.1 * 2**n * 0.5 for n, g in enumerate(gaps)] == [True, True, True], gaps
        payload = json.loads(receiver.accepted[d.id])
        assert payload["type"] == d.event and payload["data"]["job_id"] == job_id


def test_410_dead_letters_at_once_and_redeliver_sends_the_same_id_again(
    hooks_env: dict[str, str], backends: Backends, api: TestClient, webhook_receiver: Callable[..., Receiver]
) -> None:
    gone = True
    receiver = webhook_receiver(lambda n: (410, {}, 0.0) if gone else (200, {}, 0.0))
    job_id = run_job(backends, api, receiver.url)
    deliveries = settled(backends, job_id)
    for d in deliveries:
        assert d.status == "dead" and len(d.attempts) == 1 and "410" in (d.dead_reason or "")
    gone = False
    for d in deliveries:
        webhooks.redeliver(backends, d.id)
    again = settled(backends, job_id)
    assert all(d.status == "delivered" and len(d.attempts) == 2 for d in again)
    # Redelivering a delivered one is a replay: the receiver sees the same webhook-id and acknowledges it.
    webhooks.redeliver(backends, again[0].id)
    settled(backends, job_id)
    assert sum(r.webhook_id == again[0].id for r in receiver.requests) == 3
    assert set(receiver.accepted) == {d.id for d in again}


def test_timeouts_and_retry_after_are_honoured_then_it_gives_up_with_the_reason(
    hooks_env: dict[str, str], backends: Backends, api: TestClient, webhook_receiver: Callable[..., Receiver]
) -> None:
    def script(n: int) -> tuple[int, dict[str, str], float]:
        if n == 0:
            return 200, {}, 1.5  # slower than WEBHOOK_TIMEOUT_SECONDS: a failed attempt
        return 429, {"Retry-After": "1"}, 0.0

    receiver = webhook_receiver(script)
    job_id = run_job(backends, api, receiver.url)
    deliveries = settled(backends, job_id, timeout=60)
    for d in deliveries:
        assert d.status == "dead" and len(d.attempts) == 5
        assert "gave up after 5 attempts" in (d.dead_reason or "") and "429" in (d.dead_reason or "")
        assert "Timeout" in (d.attempts[0].error or "")
        tries = [r for r in receiver.requests if r.webhook_id == d.id]
        later = [b.at - a.at for a, b in zip(tries[1:], tries[2:], strict=False)]
        assert min(later) >= 0.95  # Retry-After: 1 outweighs the 0.1 s base


def test_rotated_keys_both_sign_so_a_receiver_with_either_verifies(
    hooks_env: dict[str, str], backends: Backends, api: TestClient, webhook_receiver: Callable[..., Receiver]
) -> None:
    backends.settings.webhook_tenants["dev"].secrets = [NEW_SECRET, SECRET]
    old_receiver = webhook_receiver(secrets=[SECRET])
    job_id = run_job(backends, api, old_receiver.url)
    assert all(d.status == "delivered" for d in settled(backends, job_id))
    assert all(r.valid_signature for r in old_receiver.requests)
    wrong = Receiver(secrets=["whsec_" + base64.b64encode(b"someone-else").decode()])
    body = old_receiver.requests[0]
    header = webhooks.sign([NEW_SECRET, SECRET], body.webhook_id, body.timestamp, body.body.decode())
    assert not wrong.verify(body.webhook_id, str(body.timestamp), body.body, header)


def test_callback_hosts_are_allow_listed_and_checked_after_dns(
    hooks_env: dict[str, str], backends: Backends, api: TestClient, webhook_receiver: Callable[..., Receiver]
) -> None:
    r = api.post("/api/jobs", json={"task": QUESTION, "callback_url": "https://attacker.example/hook"})
    assert r.status_code == 422 and "allow-list" in r.json()["detail"]
    # On the allow-list by name, but the operator did not allow loopback: refused once resolved.
    backends.settings.webhook_allowed_networks = []
    receiver = webhook_receiver()
    job_id = run_job(backends, api, receiver.url.replace("127.0.0.1", "localhost"))
    deliveries = settled(backends, job_id)
    assert all(d.status == "dead" and "loopback" in (d.dead_reason or "") for d in deliveries)
    assert receiver.requests == []


def test_a_dead_lettered_delivery_attempt_is_sent_again_by_the_sweep_not_dropped(backends: Backends) -> None:
    from shared.engine.outbox import WebhookMessage
    from shared.maintenance.sweep import sweep_dead_letters

    body = WebhookMessage(webhook="job-x.job.succeeded", job_id="job-x", event="job.succeeded").model_dump_json()
    backends.queue.send(body.encode(), message_id="webhook:job-x.job.succeeded:a1")
    for _ in range(backends.settings.queue_max_delivery_count):
        [m] = backends.queue.receive(1)  # type: ignore[attr-defined]
        backends.queue.abandon(m)  # type: ignore[attr-defined]
    assert backends.queue.counts().dead_lettered == 1
    sweep_dead_letters(backends)
    counts = backends.queue.counts()
    assert (counts.dead_lettered, counts.active) == (0, 1)
    [again] = backends.queue.receive(1)  # type: ignore[attr-defined]
    assert again.body == body.encode() and again.message_id != "webhook:job-x.job.succeeded:a1"
