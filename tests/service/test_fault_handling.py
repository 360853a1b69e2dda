"""Faults lose nothing and stall nothing (issue 11): one test per bug, each failing without its fix.

Faults are real: a database held locked by another connection, a stored record overwritten with
bytes that are not JSON, a process "dying" mid-step (a BaseException that no handler catches).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shared.contracts import StepMessage, Usage, utcnow
from shared.engine import layout
from shared.engine.backends import Backends
from shared.engine.ledger import month_of
from shared.engine.steps import handle_step
from shared.maintenance import stuck, sweep
from shared.ports import ModelTurn, RejectMessage
from shared.runtime.consumer import QueueConsumer
from shared.runtime.functions import QueueFunction, discover
from shared.services import health, operations
from tests.fixtures.app import ingest_samples, wait_for
from tests.fixtures.cli import run_cli
from tests.fixtures.faults import corrupt, held_locked, lock_for
from tests.service.test_step_engine import consume, submit


def queue_file(b: Backends) -> Path:
    return b.settings.data_dir / "queue.sqlite3"


def blob_file(b: Backends) -> Path:
    return b.settings.data_dir / "blobs" / "objects.sqlite3"


def step_body(job_id: str, step: int, origin: str | None = None) -> bytes:
    return StepMessage(job_id=job_id, step=step, origin=origin).model_dump_json().encode()


def step_function(b: Backends) -> QueueFunction:
    return discover("function_app").queues[0]


# --- bug 1: the ledger never goes back ------------------------------------------------------------


def test_old_steps_of_a_finished_job_redelivered_never_lower_the_ledger(backends: Backends) -> None:
    ingest_samples(backends)
    finished = [consume(backends, submit(backends, task=t).id) for t in ("How is a backup restored?", "What is a DLQ?")]
    month = month_of(finished[0].created_at)
    assert all(j.status == "succeeded" and j.step >= 2 and j.usage.total_tokens for j in finished)
    for job in finished:
        for step in reversed(range(1, job.step)):  # older committed steps, sent again after the end, oldest last
            for n in range(3):
                handle_step(backends, step_body(job.id, step, origin=f"{job.id}:{step}:dup{n}"))
    by_job = backends.ledger.by_job("dev", month)
    for job in finished:
        assert by_job[job.id] == backends.jobs.get(job.id).usage == job.usage
    total = Usage()
    for job in finished:
        total = total + job.usage
    assert backends.ledger.total("dev", month) == total  # month total == sum of job usage


# --- bug 2: workers never die ----------------------------------------------------------------------


def test_workers_and_the_lock_renewer_survive_a_queue_outage_and_health_counts_them(backends: Backends) -> None:
    calls: list[str] = []
    outage: list[threading.Thread] = []

    def run(msg: Any) -> None:
        calls.append(msg.message_id)
        if len(calls) == 1:
            # The queue goes down while this message is being processed, for longer than any wait:
            # its lock renewal and its complete both fail.
            outage.append(lock_for(queue_file(backends), 5.5))
            time.sleep(1.5)

    function = QueueFunction(name="outage_probe", queue="agent-jobs", connection="", run=run, arg_name="msg")
    consumer = QueueConsumer(backends.queue, function, concurrency=3, max_lock_renewal_seconds=30)  # type: ignore[arg-type]
    backends.queue.send(b"{}", message_id="probe:1")
    health.register_worker_pool("outage_probe", consumer.pool_state)
    consumer.start()
    try:
        wait_for(lambda: outage and not outage[0].is_alive(), timeout=20)
        assert consumer.pool_state() == health.WorkerPoolState(configured=3, alive=3, lock_renewer=True)
        # Unsettled during the outage, so delivered again once its lock expired: at least once, never lost.
        wait_for(lambda: len(calls) >= 2 and backends.queue.counts().active == 0, timeout=20)
        report = health.check(backends)
        assert report["workers"]["outage_probe"] == {"status": "up", "configured": 3, "alive": 3, "lock_renewer": "up"}
    finally:
        consumer.stop()
        health.unregister_worker_pool("outage_probe")


def test_health_reports_a_worker_pool_below_its_configured_size(backends: Backends) -> None:
    health.register_worker_pool("short", lambda: health.WorkerPoolState(configured=8, alive=5, lock_renewer=True))
    try:
        report = health.check(backends)
    finally:
        health.unregister_worker_pool("short")
    assert report["status"] == "degraded"
    assert report["workers"]["short"] == {"status": "down", "configured": 8, "alive": 5, "lock_renewer": "up"}


# --- bug 3: a stray message never fails a job -------------------------------------------------------


def test_a_stray_future_step_is_dead_lettered_with_a_reason_and_the_job_finishes(backends: Backends) -> None:
    ingest_samples(backends)
    job = submit(backends)
    with pytest.raises(RejectMessage) as rejected:  # even on its last delivery, it is not the job's failure
        handle_step(backends, step_body(job.id, 20), delivery_count=backends.settings.queue_max_delivery_count)
    assert rejected.value.reason == "StepNotNext"
    assert backends.jobs.get(job.id) == job  # untouched: no note, no status change

    backends.queue.send(step_body(job.id, 20), message_id=f"{job.id}:20")
    done = consume(backends, job.id)
    assert done.status == "succeeded" and done.dead_letter is None and done.resubmissions == 0
    [dead] = backends.queue.peek_dead_letters()
    assert (dead.message_id, dead.dead_letter_reason, dead.delivery_count) == (f"{job.id}:20", "StepNotNext", 1)
    [action] = sweep.sweep_dead_letters(backends).actions  # reported and purged; the job stays as it is
    assert (action.action, action.reason) == ("dropped", "StepNotNext")
    assert backends.queue.counts().dead_lettered == 0
    assert backends.jobs.get(job.id).status == "succeeded"


# --- bug 4: a failed submit leaves no orphan -------------------------------------------------------


def test_an_unkeyed_submit_whose_enqueue_fails_answers_503_and_leaves_no_job(
    api: TestClient, backends: Backends
) -> None:
    with held_locked(queue_file(backends)):
        started = time.perf_counter()
        r = api.post("/api/jobs", json={"task": "What does the sweep do?"})
        elapsed = time.perf_counter() - started
    assert r.status_code == 503 and r.headers["Retry-After"].isdigit(), r.text
    assert elapsed < 1.5, f"held the request {elapsed:.2f}s"
    assert api.get("/api/jobs").json()["jobs"] == []  # rolled back: no orphan listed
    assert list(backends.jobs.all()) == []


def test_a_keyed_submit_whose_enqueue_fails_keeps_one_job_that_the_retry_sends(
    api: TestClient, backends: Backends
) -> None:
    request = {"task": "What does the sweep do?"}
    with held_locked(queue_file(backends)):
        r = api.post("/api/jobs", json=request, headers={"Idempotency-Key": "k-1"})
    assert r.status_code == 503 and r.headers["Retry-After"].isdigit(), r.text
    [kept] = list(backends.jobs.all())  # the key names it, so no racing submitter can mint a second
    assert (kept.status, kept.step) == ("queued", 0)
    assert backends.queue.peek_live() == []

    first = api.post("/api/jobs", json=request, headers={"Idempotency-Key": "k-1"})
    again = api.post("/api/jobs", json=request, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"] == kept.id
    assert [j["id"] for j in api.get("/api/jobs").json()["jobs"]] == [kept.id]
    assert [m.message_id for m in backends.queue.peek_live()] == [f"{kept.id}:1"]


def test_two_creates_of_one_job_id_list_it_once_even_when_the_loser_crashed(backends: Backends) -> None:
    """Two runtimes firing one schedule occurrence both create its job, a millisecond apart."""
    from shared.contracts import Job
    from shared.ports import PreconditionFailed

    first = Job(id="job-same", tenant="dev", task="Daily summary", policy=backends.settings.policy_defaults)
    second = first.model_copy(update={"created_at": first.created_at + timedelta(milliseconds=1)})
    backends.jobs.create(first)
    with pytest.raises(PreconditionFailed):
        backends.jobs.create(second)  # the loser removes its own listing marker
    assert [job.id for _, job in backends.jobs.list_for_tenant("dev")] == ["job-same"]

    crashed = first.model_copy(update={"created_at": first.created_at + timedelta(milliseconds=2)})
    backends.objects.put(backends.jobs.marker_key(crashed), b"")  # a loser that died before cleaning up
    assert [job.id for _, job in backends.jobs.list_for_tenant("dev")] == ["job-same"]


# --- bug 5: outages fail fast ------------------------------------------------------------------------


@pytest.mark.parametrize("locked", ["storage", "queue"])
def test_with_a_dependency_locked_health_answers_within_a_second_and_requests_fail_fast(
    api: TestClient, backends: Backends, locked: str
) -> None:
    path = blob_file(backends) if locked == "storage" else queue_file(backends)
    api.get("/api/health")  # warm: connections open, the metrics provider installed
    with held_locked(path):
        started = time.perf_counter()
        r = api.get("/api/health")
        took = time.perf_counter() - started
        assert took < 1.0, f"health took {took:.2f}s"
        assert r.status_code == 503 and r.json()["dependencies"][locked]["status"] == "down", r.json()
        started = time.perf_counter()
        submitted = api.post("/api/jobs", json={"task": "Is anything up?"})
        took = time.perf_counter() - started
        assert submitted.status_code == 503 and "Retry-After" in submitted.headers, submitted.text
        assert submitted.json()["type"].endswith("/dependency-unavailable")
        assert took < 1.5, f"submit held {took:.2f}s"
    assert api.get("/api/health").json()["status"] == "ok"


# --- bug 6: no silent stalls --------------------------------------------------------------------------


class ProcessDies(BaseException):
    """What a SIGKILL looks like from inside a step: nothing after it runs."""


class DyingModel:
    name = "dying"
    offline = True

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> ModelTurn:
        raise ProcessDies()

    def ping(self) -> None:
        return None


def test_a_crash_on_the_last_delivery_leaves_the_reason_on_the_job(backends: Backends) -> None:
    ingest_samples(backends)
    job = submit(backends)
    backends.model = DyingModel()
    last = backends.settings.queue_max_delivery_count
    with pytest.raises(ProcessDies):
        handle_step(backends, step_body(job.id, 1), delivery_count=last)
    note = backends.jobs.get(job.id).dead_letter
    assert note is not None and (note.step, note.cause, note.delivery_count) == (1, "lost_lock", last)


def test_malformed_and_unknown_job_messages_are_dead_lettered_with_a_reason_then_reported(backends: Backends) -> None:
    backends.queue.send(b"not json", message_id="garbage")
    backends.queue.send(step_body("job-gone", 1), message_id="job-gone:1")
    consumer = QueueConsumer(backends.queue, step_function(backends), concurrency=1, max_lock_renewal_seconds=5)  # type: ignore[arg-type]
    consumer.start()
    try:
        wait_for(lambda: backends.queue.counts().dead_lettered == 2, timeout=10)
    finally:
        consumer.stop()
    reasons = {m.message_id: m.dead_letter_reason for m in backends.queue.peek_dead_letters()}
    assert reasons == {"garbage": "MalformedMessage", "job-gone:1": "UnknownJob"}
    result = sweep.sweep_dead_letters(backends)
    assert sorted((a.message_id, a.action, a.reason) for a in result.actions) == [
        ("garbage", "dropped", "MalformedMessage"),
        ("job-gone:1", "dropped", "UnknownJob"),
    ]
    assert backends.queue.counts().dead_lettered == 0


def test_a_corrupt_job_record_is_named_by_the_api_the_dlq_list_and_every_sweep(
    api: TestClient, backends: Backends
) -> None:
    job_id = api.post("/api/jobs", json={"task": "What is a backup?"}).json()["id"]
    [m] = backends.queue.receive(1)  # type: ignore[attr-defined]
    backends.queue.dead_letter(m, "MaxDeliveryCountExceeded", "gave up")  # type: ignore[attr-defined]
    corrupt(backends.objects, layout.job_key(job_id))

    r = api.get(f"/api/jobs/{job_id}")
    assert r.status_code == 500 and r.json()["type"].endswith("/corrupt-record"), r.text
    assert layout.job_key(job_id) in r.json()["detail"]
    [listed] = operations.dead_letters(backends)
    assert listed.job_id == job_id and "unreadable" in (listed.failure or "")
    for _ in range(2):  # a second sweep at once still sees the message the first could not handle
        [action] = sweep.sweep_dead_letters(backends).actions
        assert action.action == "error" and "unreadable" in action.detail
    report = stuck.find_and_repair(backends, repair=False)
    assert [(j.job_id, j.state) for j in report.jobs] == [(job_id, "unreadable")]


class _Killed(BaseException):
    """A process killed mid-settle: the step committed, nothing after it ran."""


def test_a_step_committed_before_its_job_record_became_unreadable_still_reaches_the_ledger(
    backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.engine import steps
    from shared.errors import CorruptRecord

    ingest_samples(backends)
    job = submit(backends)
    [m] = backends.queue.receive(1)  # type: ignore[attr-defined]

    def killed(*args: Any) -> None:
        raise _Killed()

    monkeypatch.setattr(steps, "settle", killed)
    with pytest.raises(_Killed):
        handle_step(backends, m.body)
    monkeypatch.undo()
    [cp] = backends.checkpoints.all(job.id)
    assert cp.total_usage.total_tokens and cp.tenant == "dev"
    month = month_of(job.created_at)
    assert job.id not in backends.ledger.by_job("dev", month)  # the kill came before the ledger

    corrupt(backends.objects, layout.job_key(job.id))
    for _ in range(2):  # every redelivery: refused as unreadable, accounted once
        with pytest.raises(CorruptRecord):
            handle_step(backends, m.body)
    assert backends.ledger.by_job("dev", month)[job.id] == cp.total_usage
    assert backends.ledger.total("dev", month) == cp.total_usage


def test_a_job_ended_by_the_sweep_after_its_ledger_write_was_cut_short_is_accounted_at_its_end(
    backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.engine import steps
    from shared.errors import CorruptRecord

    ingest_samples(backends)
    job = submit(backends)
    [m] = backends.queue.receive(1)  # type: ignore[attr-defined]

    def killed(*args: Any, **kwargs: Any) -> None:
        raise _Killed()

    monkeypatch.setattr(steps, "_record_usage", killed)  # projected, then killed before the ledger
    with pytest.raises(_Killed):
        handle_step(backends, m.body)
    monkeypatch.undo()
    projected = backends.jobs.get(job.id)
    assert projected.step == 1 and projected.usage.total_tokens
    month = month_of(job.created_at)
    assert job.id not in backends.ledger.by_job("dev", month)

    backends.queue.complete(m)  # type: ignore[attr-defined]
    corrupt(backends.objects, layout.checkpoint_key(job.id, 1))  # step 2 can never start from it
    [m2] = backends.queue.receive(1)  # type: ignore[attr-defined]
    with pytest.raises(CorruptRecord):  # its last delivery: the reason goes on the job
        handle_step(backends, m2.body, backends.settings.queue_max_delivery_count)
    backends.queue.dead_letter(m2, "MaxDeliveryCountExceeded", "gave up")  # type: ignore[attr-defined]
    sweep.sweep_dead_letters(backends)
    ended = backends.jobs.get(job.id)
    assert ended.finished, ended
    assert backends.ledger.by_job("dev", month)[job.id] == ended.usage == projected.usage
    assert backends.ledger.total("dev", month) == ended.usage


def test_a_redelivered_final_step_says_job_finished_once(backends: Backends, caplog: pytest.LogCaptureFixture) -> None:
    ingest_samples(backends)
    caplog.set_level(logging.INFO, logger="agent.steps")
    job = consume(backends, submit(backends).id)
    handle_step(backends, step_body(job.id, job.step, origin=f"{job.id}:{job.step}:again"))
    finished = [r for r in caplog.records if getattr(r, "event", None) == "job_finished"]
    assert len(finished) == 1


# --- the stuck-job detector ----------------------------------------------------------------------------


def lose_next_step(b: Backends) -> None:
    """The live message disappears without running (a purge, a crash between a commit and its send)."""
    for m in b.queue.receive(10):  # type: ignore[attr-defined]
        b.queue.complete(m)  # type: ignore[attr-defined]


def test_a_job_whose_next_step_was_lost_is_repaired_and_finishes(backends: Backends) -> None:
    ingest_samples(backends)
    job = submit(backends)
    handle_step(backends, step_body(job.id, 1))
    lose_next_step(backends)
    now = utcnow()
    assert stuck.find_and_repair(backends, now=now).stuck == 0  # just moved: not stuck yet
    later = now + timedelta(seconds=backends.settings.stuck_step_seconds + backends.settings.queue_lock_seconds + 1)
    report = stuck.find_and_repair(backends, now=later)
    [repaired] = report.jobs
    assert (repaired.state, repaired.next_step, repaired.repairs) == ("repaired", 2, 1)
    assert repaired.message_id == f"{job.id}:2:s1"
    assert stuck.find_and_repair(backends, now=later).stuck == 0  # its next step is on its way now
    done = consume(backends, job.id)
    assert done.status == "succeeded" and done.repairs == 1
    assert backends.checkpoints.steps(job.id) == list(range(1, done.step + 1))


def test_a_job_stuck_past_the_repair_limit_fails_with_reason_stalled(
    app_env: dict[str, str], backends: Backends
) -> None:
    backends.settings.stuck_max_repairs = 0
    job = submit(backends)
    lose_next_step(backends)
    report = stuck.find_and_repair(backends, now=utcnow() + timedelta(hours=1))
    assert [(j.job_id, j.state) for j in report.jobs] == [(job.id, "failed")]
    record = backends.jobs.get(job.id)
    assert record.status == "failed" and record.error and record.error.reason == "stalled"


def test_agentctl_jobs_stuck_lists_a_stalled_job_and_repairs_it(backends: Backends) -> None:
    job = submit(backends)
    lose_next_step(backends)
    env = {"STUCK_STEP_SECONDS": "0.01", "QUEUE_LOCK_SECONDS": "0.01"}
    time.sleep(0.1)
    listed = run_cli("jobs", "stuck", data_dir=backends.settings.data_dir, env=env)
    assert listed.code == 0, listed.stderr
    assert [(j["job_id"], j["state"]) for j in listed.data["jobs"]] == [(job.id, "waiting")]
    repaired = run_cli("jobs", "stuck", "--repair", data_dir=backends.settings.data_dir, env=env)
    assert [(j["job_id"], j["state"]) for j in repaired.data["jobs"]] == [(job.id, "repaired")]
    assert [m.message_id for m in backends.queue.peek_live()] == [f"{job.id}:1:s1"]
