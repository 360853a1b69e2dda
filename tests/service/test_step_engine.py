"""The step engine's invariants, driven in-process through the runtime's own consumer."""

from __future__ import annotations

from typing import Any

import pytest

from shared.adapters.local.offline_model import OfflineModel
from shared.contracts import StepMessage
from shared.engine.backends import Backends
from shared.engine.job import apply_checkpoint
from shared.engine.steps import handle_step
from shared.ports import ModelTurn, TransientModelError
from shared.runtime.consumer import QueueConsumer
from shared.runtime.functions import discover
from shared.services import jobs
from tests.fixtures.app import ingest_samples, wait_for
from tests.fixtures.concurrency import raised, run_together

QUESTION = "How are dead-lettered messages handled?"


def consume(b: Backends, job_id: str, timeout: float = 30.0) -> Any:
    """Run the app's queue function (discovered from function_app) until the job ends."""
    fn = discover("function_app").queues[0]
    consumer = QueueConsumer(b.queue, fn, concurrency=2, max_lock_renewal_seconds=30)  # type: ignore[arg-type]
    consumer.start()
    try:
        return wait_for(lambda: (j := b.jobs.get(job_id)) is not None and j.finished and j, timeout)
    finally:
        consumer.stop()


def submit(b: Backends, task: str = QUESTION, **kw: Any) -> Any:
    job, _ = jobs.submit(b, "dev", jobs.JobRequest(task=task, **kw))
    return job


def test_job_runs_to_a_verified_report(backends: Backends) -> None:
    ingest_samples(backends)
    job = consume(backends, submit(backends).id)
    assert job.status == "succeeded", job.error
    steps = backends.checkpoints.steps(job.id)
    assert steps == list(range(1, job.step + 1))
    report = backends.reports.get(job.id)
    assert report and report.citations and report.offline_model
    for c in report.citations:
        chunk = backends.index.get_chunks(c.doc_id, c.chunk_id)[0]
        assert chunk.content[c.start : c.end] == c.quote
    assert [p.step for p in job.progress] == steps


def test_duplicate_concurrent_delivery_commits_once_and_enqueues_once(backends: Backends) -> None:
    ingest_samples(backends)
    backends.model = OfflineModel(latency_ms=200)  # both deliveries are mid-step at the same time
    job = submit(backends)
    [first] = backends.queue.receive(1)  # type: ignore[attr-defined]
    assert not raised(run_together(2, lambda _: handle_step(backends, first.body)))
    backends.queue.complete(first)  # type: ignore[attr-defined]
    assert backends.checkpoints.steps(job.id) == [1]
    waiting = backends.queue.receive(10)  # type: ignore[attr-defined]
    assert [m.message_id for m in waiting] == [f"{job.id}:2"]
    assert backends.jobs.get(job.id).step == 1


def test_redelivery_after_commit_only_redoes_follow_up(backends: Backends) -> None:
    ingest_samples(backends)
    job = submit(backends)
    body = StepMessage(job_id=job.id, step=1).model_dump_json().encode()
    handle_step(backends, body)
    usage_after_first = backends.jobs.get(job.id).usage
    handle_step(backends, body)  # the broker delivers again, e.g. after a crash before completing
    assert backends.checkpoints.steps(job.id) == [1]
    assert backends.jobs.get(job.id).usage == usage_after_first
    assert backends.queue.counts().active == 2  # step 1 (never received here) and step 2, once


class ExplodingModel:
    name = "exploding"
    offline = True

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> ModelTurn:
        raise RuntimeError("the model adapter crashed")

    def ping(self) -> None:
        return None


@pytest.fixture
def short_delivery(app_env: dict[str, str]) -> None:
    app_env.update({"QUEUE_MAX_DELIVERY_COUNT": "3", "QUEUE_LOCK_SECONDS": "1"})


def test_poison_step_is_dead_lettered_with_its_reason(short_delivery: None, backends: Backends) -> None:
    backends.model = ExplodingModel()
    job = submit(backends)
    fn = discover("function_app").queues[0]
    consumer = QueueConsumer(backends.queue, fn, concurrency=1, max_lock_renewal_seconds=5)  # type: ignore[arg-type]
    consumer.start()
    try:
        wait_for(lambda: backends.queue.counts().dead_lettered == 1, timeout=20)
    finally:
        consumer.stop()
    [dead] = backends.queue.peek_dead_letters()
    assert dead.message_id == f"{job.id}:1"
    assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
    assert dead.delivery_count == 3
    record = backends.jobs.get(job.id)
    assert record.dead_letter and record.dead_letter.step == 1
    assert "the model adapter crashed" in record.dead_letter.description
    assert backends.checkpoints.steps(job.id) == []
    counts = backends.queue.counts()
    assert (counts.active, counts.scheduled) == (0, 0)


def test_cancel_is_honoured_at_the_next_step_boundary(backends: Backends) -> None:
    ingest_samples(backends)
    job = submit(backends)
    handle_step(backends, StepMessage(job_id=job.id, step=1).model_dump_json().encode())
    jobs.cancel(backends, "dev", job.id)
    handle_step(backends, StepMessage(job_id=job.id, step=2).model_dump_json().encode())
    record = backends.jobs.get(job.id)
    assert record.status == "cancelled" and record.step == 2
    assert backends.checkpoints.get(job.id, 2).outcome.status == "cancelled"


def test_step_limit_stops_the_job_with_policy_limit(backends: Backends) -> None:
    ingest_samples(backends)
    job = consume(backends, submit(backends, policy={"max_steps": 3}).id)
    assert job.status == "failed" and job.error.reason == "policy_limit"
    assert job.step == 4  # steps 1-3 ran; step 4 is the boundary that stopped it


def test_job_record_can_be_rebuilt_from_checkpoints(backends: Backends) -> None:
    ingest_samples(backends)
    job = consume(backends, submit(backends).id)
    rebuilt = job.model_copy(
        update={"step": 0, "progress": [], "status": "queued", "usage": job.usage * 0 if False else type(job.usage)()}
    )
    last = backends.checkpoints.get(job.id, job.step)
    assert apply_checkpoint(rebuilt, last, lambda n: backends.checkpoints.get(job.id, n))
    assert (rebuilt.status, rebuilt.step, rebuilt.usage) == (job.status, job.step, job.usage)
    assert [p.step for p in rebuilt.progress] == [p.step for p in job.progress]


class ThrottledModel:
    name = "throttled"
    offline = True

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> ModelTurn:
        raise TransientModelError("429 from the model", retry_after=30)

    def ping(self) -> None:
        return None


def test_a_resubmitted_step_reschedules_under_fresh_message_ids(backends: Backends) -> None:
    """Duplicate detection must not swallow the reschedule of a re-submitted step (the job would stall)."""
    backends.model = ThrottledModel()
    job = submit(backends)
    handle_step(backends, StepMessage(job_id=job.id, step=1).model_dump_json().encode())
    resubmitted = StepMessage(job_id=job.id, step=1, origin=f"{job.id}:1:r7")
    handle_step(backends, resubmitted.model_dump_json().encode())
    assert backends.queue.counts().scheduled == 2  # both reschedules are waiting, neither was dropped
    assert resubmitted.model_copy(update={"attempt": 1}).message_id == f"{job.id}:1:r7:a1"
    assert StepMessage(job_id=job.id, step=1, attempt=1).message_id == f"{job.id}:1:a1"
