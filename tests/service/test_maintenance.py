"""Maintenance services on the embedded backends: leases, timers, the dead-letter sweep, retention."""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.functions.timer import TimerRequest
from pydantic import ValidationError

from agents.policy import PolicyViolation
from shared.adapters.local.offline_model import OfflineModel
from shared.contracts import Checkpoint, DeadLetterNote, Job, Outcome, Policy, Report, StepMessage
from shared.engine.backends import Backends
from shared.engine.job import note_dead_letter
from shared.engine.steps import StepOutOfOrder, failure_cause
from shared.errors import DependencyUnavailable
from shared.maintenance import backup, retention, run_scheduled, sweep
from shared.maintenance import lease as lease_module
from shared.maintenance.lease import LeaseHeld, LeaseLost, acquire, exclusive, lease_key
from shared.maintenance.resubmissions import JobNotResubmittable
from shared.ports import ModelTurn, PermanentModelError, QueueMessage, TransientModelError
from shared.runtime.consumer import QueueConsumer
from shared.runtime.functions import discover
from shared.services import jobs, operations
from tests.fixtures.app import ingest_samples, wait_for
from tests.fixtures.concurrency import raised, run_together

QUESTION = "How are dead-lettered messages handled?"


# --- helpers ------------------------------------------------------------------------------------------


@pytest.fixture
def fast_failures(app_env: dict[str, str]) -> None:
    """Two deliveries per message, short locks, no in-step reschedules: a failing step dead-letters fast."""
    app_env.update({"QUEUE_MAX_DELIVERY_COUNT": "2", "QUEUE_LOCK_SECONDS": "1", "STEP_MAX_RETRIES": "0"})


class FlakyModel:
    """The offline model behind a fault: the first `failures` calls raise `error`."""

    name = "flaky"
    offline = True

    def __init__(self, error: Exception, failures: int) -> None:
        self.inner, self.error, self.failures = OfflineModel(), error, failures
        self._lock = threading.Lock()

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> ModelTurn:
        with self._lock:
            if self.failures > 0:
                self.failures -= 1
                raise self.error
        return self.inner.complete(messages, tools)

    def ping(self) -> None:
        return None


class Crash(BaseException):
    """The process dies here (BaseException: no `except Exception` on the way catches it)."""


class CrashOnComplete:
    """The embedded queue, except that completing a dead letter kills the 'process' the first time."""

    def __init__(self, queue: Any) -> None:
        self.queue, self.crashes = queue, 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.queue, name)

    def complete_dead_letter(self, message: QueueMessage) -> None:
        if self.crashes:
            self.crashes -= 1
            raise Crash()
        self.queue.complete_dead_letter(message)


def run_until_dead_lettered_or_done(b: Backends, job_id: str) -> Job:
    fn = discover("function_app").queues[0]
    consumer = QueueConsumer(b.queue, fn, concurrency=1, max_lock_renewal_seconds=5)  # type: ignore[arg-type]
    consumer.start()
    try:
        return wait_for(
            lambda: (j := b.jobs.get(job_id)) is not None and (j.finished or b.queue.counts().dead_lettered > 0) and j,
            timeout=30,
        )
    finally:
        consumer.stop()


def submit(b: Backends, tenant: str = "dev") -> Job:
    job, _ = jobs.submit(b, tenant, jobs.JobRequest(task=QUESTION))
    return job


def seed_job(b: Backends, **fields: Any) -> Job:
    job = Job(
        id=fields.pop("id", f"job-{len(list(b.jobs.all())):04d}"),
        tenant=fields.pop("tenant", "dev"),
        task=QUESTION,
        policy=Policy(),
        **fields,
    )
    b.jobs.create(job)
    return job


_sends = itertools.count(1)


def dead_letter(
    b: Backends, job_id: str, step: int, failure: BaseException | None, *, reason: str = "MaxDeliveryCountExceeded"
) -> QueueMessage:
    """Step `step` dead-lettered as the broker does it, with the note the step engine writes (if failure)."""
    msg = StepMessage(job_id=job_id, step=step)
    message_id = f"{msg.message_id}:t{next(_sends)}"  # each one a new message, as re-submissions are
    b.queue.send(msg.model_dump_json().encode(), message_id=message_id)
    [m] = [m for m in b.queue.receive(10) if m.message_id == message_id]  # type: ignore[attr-defined]
    if failure is not None:
        note = DeadLetterNote(
            step=step,
            delivery_count=10,
            reason=reason,
            cause=failure_cause(failure),
            description=f"{type(failure).__name__}: {failure}",
        )
        b.jobs.update(job_id, lambda j: note_dead_letter(j, note))
    b.queue.dead_letter(m, reason, "Message could not be consumed after 10 delivery attempts.")  # type: ignore[attr-defined]
    return m


# --- leases ---------------------------------------------------------------------------------------------


def test_lease_is_exclusive_until_released_or_expired(backends: Backends) -> None:
    first = acquire(backends.objects, "backup", ttl=60)
    with pytest.raises(LeaseHeld, match="already running"):
        acquire(backends.objects, "backup", ttl=60)
    first.release()
    second = acquire(backends.objects, "backup", ttl=60)
    # A holder that died: its expiry passes, and the next instance takes the lease over with If-Match.
    stale = b'{"holder": "dead-host:1", "expires_at": "2000-01-01T00:00:00+00:00"}'
    backends.objects.put(lease_key("backup"), stale, if_match=second.etag)
    third = acquire(backends.objects, "backup", ttl=60)
    with pytest.raises(LeaseLost):
        second.renew()  # the old holder finds out before it writes anything more
    second.release()  # and its release leaves the new holder's lease alone
    assert backends.objects.get(lease_key("backup")).etag == third.etag
    third.renew()
    third.release()
    assert backends.objects.get(lease_key("backup")) is None


def test_a_lease_of_a_killed_process_is_taken_over_at_once(backends: Backends) -> None:
    # A timer killed mid-run leaves a lease with minutes to go; its process is gone, so nobody waits.
    def held_by(pid: int, space: str | None = lease_module._PID_SPACE) -> bytes:
        until = (datetime.now(UTC) + timedelta(minutes=4)).isoformat()
        record = {"holder": f"host:{pid}:timer-dlq_sweep", "pid": pid, "pid_space": space, "expires_at": until}
        return json.dumps(record).encode()

    key = lease_key("dead-letters")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        backends.objects.put(key, held_by(alive.pid))
        with pytest.raises(LeaseHeld):
            acquire(backends.objects, "dead-letters", ttl=60)  # a live holder keeps it
        alive.kill()
        wait_for(lambda: lease_module._read(held_by(alive.pid))[2], timeout=10)
        taken = acquire(backends.objects, "dead-letters", ttl=60)  # killed, not yet reaped: a zombie
        taken.release()
    finally:
        alive.kill()
        alive.wait()
    backends.objects.put(key, held_by(alive.pid))  # reaped: no such process
    acquire(backends.objects, "dead-letters", ttl=60).release()
    # A holder in another pid namespace (another container, host or boot) is judged by its expiry alone.
    backends.objects.put(key, held_by(alive.pid, space="another-boot:4026531836"))
    with pytest.raises(LeaseHeld):
        acquire(backends.objects, "dead-letters", ttl=60)


def test_lease_is_reentrant_within_one_run(backends: Backends) -> None:
    with exclusive(backends.objects, "knowledge-index") as outer:
        with exclusive(backends.objects, "knowledge-index") as inner:
            assert inner is outer
        assert backends.objects.get(lease_key("knowledge-index")) is not None
    assert backends.objects.get(lease_key("knowledge-index")) is None


def test_a_lease_left_behind_by_an_outage_is_cleared_by_its_own_process(
    backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sweep ended while the disk was full: its release failed, and its lease record stayed.
    objects = backends.objects
    real_delete = objects.delete

    def failing_delete(key: str, *, if_match: str | None = None) -> bool:
        raise DependencyUnavailable("disk full")

    monkeypatch.setattr(objects, "delete", failing_delete)
    with pytest.raises(DependencyUnavailable), exclusive(objects, "dead-letters"):
        pass
    monkeypatch.setattr(objects, "delete", real_delete)
    assert objects.get(lease_key("dead-letters")) is not None
    # Another process still sees it held until it expires...
    stranger = dict(lease_module._left_behind)
    lease_module._left_behind.clear()
    with pytest.raises(LeaseHeld):
        acquire(objects, "dead-letters", ttl=60)
    lease_module._left_behind.update(stranger)
    # ...but this process knows that run ended, and the next one starts at once.
    with exclusive(objects, "dead-letters"):
        pass
    assert objects.get(lease_key("dead-letters")) is None


# --- timers ---------------------------------------------------------------------------------------------


def _timer(name: str):  # type: ignore[no-untyped-def]
    return next(t for t in discover("function_app").timers if t.name == name)


def test_two_concurrent_timer_runs_do_the_work_once(backends: Backends) -> None:
    ingest_samples(backends)
    fn = _timer("backup")
    assert not raised(run_together(2, lambda _: fn.run(timer=TimerRequest(past_due=False))))
    assert len(backup.list_backups(backends)) == 1
    # A late second instance, after the first finished, finds the occurrence's run record and skips too.
    fn.run(timer=TimerRequest(past_due=False))
    assert len(backup.list_backups(backends)) == 1
    assert len(list(backends.objects.list("ops/runs/backup/"))) == 1
    assert backends.objects.get(lease_key(backup.LEASE)) is None


def test_past_due_timer_is_logged_and_still_runs(backends: Backends, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.maintenance")
    _timer("retention").run(timer=TimerRequest(past_due=True))
    events = [getattr(r, "event", None) for r in caplog.records]
    assert "timer_past_due" in events and "timer_done" in events
    done = next(r for r in caplog.records if getattr(r, "event", None) == "timer_done")
    assert "checkpoints_deleted=0" in done.getMessage()


def test_timer_skips_while_another_instance_holds_the_lease(
    backends: Backends, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.maintenance")
    with exclusive(backends.objects, sweep.LEASE):
        holder = threading.Thread(target=lambda: run_scheduled(backends, "dlq_sweep"))  # another context
        holder.start()
        holder.join()
    assert any(getattr(r, "reason", None) == "lease_held" for r in caplog.records)
    assert list(backends.objects.list("ops/runs/dlq_sweep/")) == []


# --- the dead-letter sweep ------------------------------------------------------------------------------


def test_sweep_resubmits_a_transient_dead_letter_and_the_job_completes(fast_failures: None, backends: Backends) -> None:
    ingest_samples(backends)
    backends.model = FlakyModel(TransientModelError("429 Too Many Requests", retry_after=0), failures=2)
    job = submit(backends)
    run_until_dead_lettered_or_done(backends, job.id)
    assert backends.queue.counts().dead_lettered == 1
    assert "TransientModelError" in backends.jobs.get(job.id).dead_letter.description

    result = sweep.sweep_dead_letters(backends)
    assert (result.examined, result.resubmitted, result.failed) == (1, 1, 0)
    [action] = result.actions
    assert action.cause == "transient" and action.new_message_id == f"{job.id}:1:r{action.sequence_number}"
    assert backends.queue.counts().dead_lettered == 0
    assert backends.jobs.get(job.id).resubmissions == 1

    done = run_until_dead_lettered_or_done(backends, job.id)
    assert done.status == "succeeded", done.error
    assert backends.checkpoints.steps(job.id) == list(range(1, done.step + 1))


def test_sweep_fails_the_job_of_a_permanent_dead_letter_with_its_reason(
    fast_failures: None, backends: Backends
) -> None:
    backends.model = FlakyModel(RuntimeError("the model adapter crashed"), failures=100)
    job = submit(backends)
    run_until_dead_lettered_or_done(backends, job.id)

    result = sweep.sweep_dead_letters(backends)
    assert (result.resubmitted, result.failed) == (0, 1)
    record = backends.jobs.get(job.id)
    assert record.status == "failed" and record.finished_at is not None
    assert record.error.reason == "step_failed"
    assert "RuntimeError: the model adapter crashed" in record.error.detail
    assert record.resubmissions == 0
    assert backends.queue.counts() == type(backends.queue.counts())(active=0, scheduled=0, dead_lettered=0)


def test_crash_between_job_update_and_completion_loses_and_double_counts_nothing(
    fast_failures: None, backends: Backends
) -> None:
    ingest_samples(backends)
    job = seed_job(backends)
    dead_letter(backends, job.id, 1, TransientModelError("503 from the model"))
    real_queue = backends.queue
    backends.queue = CrashOnComplete(real_queue)  # type: ignore[assignment]
    with pytest.raises(Crash):
        sweep.sweep_dead_letters(backends)
    # The job was updated and the step re-sent; the dead letter is still there (not completed).
    assert backends.jobs.get(job.id).resubmissions == 1
    assert real_queue.counts().dead_lettered == 1

    # The next run (once the crashed run's lock on the message has run out) redoes the same decision.
    result = wait_for(lambda: (r := sweep.sweep_dead_letters(backends)).examined and r, timeout=10)
    assert [a.action for a in result.actions] == ["resubmitted"]
    assert backends.jobs.get(job.id).resubmissions == 1  # not 2
    assert real_queue.counts().dead_lettered == 0
    assert real_queue.counts().active == 1  # the second send had the same id: duplicate detection dropped it
    backends.queue = real_queue
    done = run_until_dead_lettered_or_done(backends, job.id)
    assert done.status == "succeeded"


def test_transient_dead_letters_past_the_limit_fail_the_job(app_env: dict[str, str], backends: Backends) -> None:
    job = seed_job(backends)
    for _ in range(backends.settings.dlq_max_resubmissions):
        dead_letter(backends, job.id, 1, DependencyUnavailable("blob storage unreachable"))
        assert sweep.sweep_dead_letters(backends).resubmitted == 1
        [again] = [m for m in backends.queue.receive(10) if m.message_id.startswith(f"{job.id}:1:r")]
        backends.queue.complete(again)
    dead_letter(backends, job.id, 1, TimeoutError("the read timed out"))
    result = sweep.sweep_dead_letters(backends)
    assert result.failed == 1
    record = backends.jobs.get(job.id)
    assert record.status == "failed" and record.error.reason == "retries_exhausted"
    assert record.resubmissions == backends.settings.dlq_max_resubmissions


def _validation_error() -> ValidationError:
    try:
        Policy.model_validate({"max_steps": 0})
    except ValidationError as exc:
        return exc
    raise AssertionError("max_steps=0 should not validate")


class RenamedSdkError(TransientModelError):
    """What an adapter raises: whatever the SDK calls it, the port's type decides."""


@pytest.mark.parametrize(
    "failure, cause",
    [
        (TransientModelError("429"), "transient"),
        (DependencyUnavailable("queue"), "transient"),
        (StepOutOfOrder("checkpoint 2 is missing"), "transient"),
        (TimeoutError("Request timed out."), "transient"),
        (ConnectionResetError("reset by peer"), "transient"),
        (RenamedSdkError("ServerBusy"), "transient"),
        (None, "lost_lock"),
        (_validation_error(), "poison"),
        (PermanentModelError("content filter"), "permanent"),
        (PolicyViolation("allowed_tools", "delete_all not allowed"), "policy"),
        (RuntimeError("a bug"), "poison"),
        (KeyError("sources"), "poison"),
    ],
)
def test_dead_letter_causes_are_classified_by_the_exception_on_the_last_delivery(
    backends: Backends, failure: BaseException | None, cause: str
) -> None:
    job = seed_job(backends)
    message = dead_letter(backends, job.id, 1, failure)
    assert sweep.classify(backends.jobs.get(job.id), 1, message)[0] == cause


def test_a_dead_letter_of_a_job_asked_to_cancel_cancels_it(backends: Backends) -> None:
    job = seed_job(backends, cancel_requested=True)
    dead_letter(backends, job.id, 1, TransientModelError("429"))
    [action] = sweep.sweep_dead_letters(backends).actions
    assert (action.action, action.cause) == ("cancelled", "cancel_requested")
    record = backends.jobs.get(job.id)
    assert record.status == "cancelled" and record.error.reason == "cancelled" and record.resubmissions == 0


def test_dead_letters_of_missing_finished_or_progressed_jobs_are_completed_with_a_log_line(
    backends: Backends, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.maintenance")
    finished = seed_job(backends, status="succeeded", finished_at=datetime.now(UTC))
    moved_on = seed_job(backends, status="running", step=3)
    dead_letter(backends, finished.id, 2, RuntimeError("x"))
    dead_letter(backends, moved_on.id, 2, RuntimeError("x"))
    orphan = StepMessage(job_id="job-gone", step=1)
    backends.queue.send(orphan.model_dump_json().encode(), message_id=orphan.message_id)
    [m] = [m for m in backends.queue.receive(10) if m.message_id == orphan.message_id]
    backends.queue.dead_letter(m, "MaxDeliveryCountExceeded", "")

    result = sweep.sweep_dead_letters(backends)
    assert sorted(a.action for a in result.actions) == ["dropped", "dropped", "stale"]
    assert result.completed_without_action == 3 and backends.queue.counts().dead_lettered == 0
    assert backends.jobs.get(moved_on.id).status == "running"  # untouched
    assert backends.jobs.get(finished.id).status == "succeeded"
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "job no longer exists" in messages and "job already succeeded" in messages


def test_operator_resubmissions(backends: Backends) -> None:
    job = seed_job(backends)
    first = dead_letter(backends, job.id, 1, RuntimeError("fixed by a deploy"))
    assert operations.dead_letter(backends, first.message_id).cause == "poison"
    action = operations.resubmit_dead_letter(backends, first.message_id)  # the operator overrides the cause
    assert (action.action, action.cause, action.resubmissions) == ("resubmitted", "operator", 1)
    with pytest.raises(operations.DeadLetterNotFound):
        operations.resubmit_dead_letter(backends, first.message_id)

    # Re-sending the next step supersedes a dead letter of that step that is still in the queue.
    second = dead_letter(backends, job.id, 1, TransientModelError("429"))
    resent = operations.resubmit_job(backends, job.id)
    assert (resent.step, resent.resubmissions) == (1, 2) and resent.message_id.startswith(f"{job.id}:1:o")
    [action] = sweep.sweep_dead_letters(backends).actions
    assert (action.message_id, action.action) == (second.message_id, "superseded")
    assert backends.jobs.get(job.id).resubmissions == 2

    backends.jobs.update(job.id, lambda j: setattr(j, "status", "failed") or True)
    with pytest.raises(JobNotResubmittable):
        operations.resubmit_job(backends, job.id)
    rerun = operations.rerun_job(backends, job.id)
    assert (rerun.tenant, rerun.task, rerun.policy) == (job.tenant, job.task, job.policy) and rerun.id != job.id


def test_purge_removes_every_dead_letter_and_leaves_jobs_alone(backends: Backends) -> None:
    job = seed_job(backends)
    dead_letter(backends, job.id, 1, RuntimeError("x"))
    dead_letter(backends, job.id, 2, RuntimeError("y"))
    assert [d.step for d in operations.dead_letters(backends)] == [1, 2]
    assert operations.purge_dead_letters(backends) == 2
    assert backends.queue.counts().dead_lettered == 0
    assert backends.jobs.get(job.id).status == "queued"


# --- retention ------------------------------------------------------------------------------------------


def _checkpoints(b: Backends, job_id: str, steps: int, at: datetime) -> None:
    for n in range(1, steps + 1):
        outcome = Outcome(status="succeeded") if n == steps else None
        b.checkpoints.commit(
            Checkpoint(
                job_id=job_id, step=n, kind="model", summary=f"step {n}", state={}, outcome=outcome, created_at=at
            )
        )


def test_retention_keeps_reports_records_and_last_checkpoints(backends: Backends) -> None:
    now = datetime(2025, 3, 10, tzinfo=UTC)
    old = seed_job(
        backends, status="succeeded", created_at=now - timedelta(days=41), finished_at=now - timedelta(days=40)
    )
    recent = seed_job(
        backends, status="failed", created_at=now - timedelta(days=6), finished_at=now - timedelta(days=5)
    )
    running = seed_job(backends, status="running", created_at=now - timedelta(days=45))
    _checkpoints(backends, old.id, 5, now - timedelta(days=40))
    _checkpoints(backends, recent.id, 3, now - timedelta(days=5))
    _checkpoints(backends, running.id, 2, now - timedelta(days=45))
    backends.reports.save(old.id, Report(markdown="# kept"))
    backends.objects.put("ops/runs/dlq_sweep/20250101T001500Z.json", b"{}")
    backends.objects.put("ops/runs/dlq_sweep/20250309T001500Z.json", b"{}")

    result = retention.apply_retention(backends, now=now)
    assert result.run_records_deleted == 1
    assert list(backends.objects.list("ops/runs/")) == ["ops/runs/dlq_sweep/20250309T001500Z.json"]
    assert (result.jobs_examined, result.jobs_pruned, result.checkpoints_deleted) == (3, 1, 4)
    assert backends.checkpoints.steps(old.id) == [5]
    assert backends.reports.get(old.id).markdown == "# kept"
    assert backends.jobs.get(old.id).status == "succeeded"
    assert backends.checkpoints.steps(recent.id) == [1, 2, 3]
    assert backends.checkpoints.steps(running.id) == [1, 2]
    assert retention.apply_retention(backends, now=now).checkpoints_deleted == 0
