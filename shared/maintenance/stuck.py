"""The stuck-job detector: every unfinished job is either on its way or repaired, and says which.

A job is on its way when a message for its next step is waiting, scheduled or running (the
queue's live messages, read by message id "{job_id}:{step}[:...]"), when that step sits in
the dead-letter queue (the sweep decides about it, and the job's dead-letter note says why), or
when it is parked by design (waiting for approval, or for its sub-question jobs).
A job is stuck when neither holds and nothing moved for longer than a step's expected time plus
the queue's lock duration (STUCK_STEP_SECONDS + QUEUE_LOCK_SECONDS): its next step was lost
(a crash between a commit and the next send, a first enqueue that failed, a purged message).

Repair re-sends the next step under a fresh message id "{job_id}:{step}:s{n}" (duplicate
detection would drop the original id), recorded in the job's re-submission log with a key
per stall (the step and the time of the last progress), so a detector that crashes and runs
again makes the same decision and the same send, which the broker drops. The job's `repairs`
is a projection of that log. Past STUCK_MAX_REPAIRS the job fails with reason `stalled`; a job
whose cancel was requested is cancelled instead. Each repair and each failure is a log event
and an `agent.jobs.stuck` metric, which the Bicep alert watches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from shared.contracts import Job, StepMessage, utcnow
from shared.engine import job as lifecycle
from shared.engine import layout
from shared.engine.backends import Backends
from shared.errors import CorruptRecord
from shared.maintenance.lease import exclusive
from shared.maintenance.resubmissions import Resubmission, ResubmissionLog, ResubmissionStore
from shared.observability import metrics
from shared.observability.logs import job_context

log = logging.getLogger("agent.maintenance")

LEASE = "stuck-jobs"
# Above this many live messages the picture is incomplete: report, but repair nothing this run.
LIVE_PEEK_MAX = 20_000

State = Literal["dead_lettered", "waiting", "repaired", "failed", "cancelled", "unreadable"]


class JobWhereabouts(BaseModel):
    """Where one unfinished job is, and why."""

    job_id: str
    tenant: str | None = None
    status: str | None = None
    next_step: int | None = None
    state: State
    reason: str = Field("", description="Where the job is, in words an operator can act on.")
    idle_seconds: float | None = Field(None, description="Seconds since the job last moved.")
    message_id: str | None = Field(None, description="The re-sent step's message id, for a repair.")
    repairs: int | None = None


class StuckReport(BaseModel):
    started_at: datetime = Field(default_factory=utcnow)
    examined: int = Field(0, description="Unfinished jobs looked at.")
    in_flight: int = 0
    stuck: int = Field(0, description="Jobs found stuck (repaired, failed or cancelled) or waiting to be.")
    repaired: int = 0
    failed: int = 0
    unreadable: int = 0
    complete_view: bool = Field(True, description="False when the queue held too many messages to see them all.")
    jobs: list[JobWhereabouts] = Field(
        default_factory=list, description="Every job not simply in flight: stuck, repaired, failed or unreadable."
    )
    duration_ms: float = 0.0

    def counts(self) -> dict[str, int]:
        return {
            "examined": self.examined,
            "in_flight": self.in_flight,
            "stuck": self.stuck,
            "repaired": self.repaired,
            "failed": self.failed,
            "unreadable": self.unreadable,
        }


def _step_of(message_id: str) -> tuple[str, int] | None:
    job_id, _, rest = message_id.partition(":")
    step = rest.split(":", 1)[0]
    return (job_id, int(step)) if step.isdigit() else None


def _live_steps(b: Backends) -> tuple[set[tuple[str, int]], set[tuple[str, int]], bool]:
    """(steps with a live message, dead-lettered steps, whether the view of live messages is complete)."""
    peeked = b.queue.peek_live(LIVE_PEEK_MAX)
    live = {found for m in peeked if (found := _step_of(m.message_id))}
    dead = {found for m in b.queue.peek_dead_letters(LIVE_PEEK_MAX) if (found := _step_of(m.message_id))}
    return live, dead, len(peeked) < LIVE_PEEK_MAX


def _waiting_on_children(b: Backends, job: Job) -> bool:
    """A parked deep job waits while a sub-question job is unfinished (each of those is looked at itself)."""
    for child_id in job.children:
        try:
            child = b.jobs.get(child_id)
        except CorruptRecord:
            continue
        if child is not None and not child.finished:
            return True
    return False


def _last_progress(b: Backends, job: Job, last: int) -> datetime:
    moved = job.updated_at
    if last > job.step:  # committed but not yet projected (a crash between the two)
        cp = b.checkpoints.get(job.id, last)
        if cp is not None and cp.created_at > moved:
            moved = cp.created_at
    return moved


def find_and_repair(b: Backends, *, repair: bool = True, now: datetime | None = None) -> StuckReport:
    """Look at every unfinished job; repair (or fail) the stuck ones when repair=True."""
    started = time.perf_counter()
    now = now or utcnow()
    report = StuckReport(started_at=now)
    if repair:
        with exclusive(b.objects, LEASE) as lease:
            _scan(b, report, now, repair=True, keep_alive=lease.keep_alive)
    else:
        _scan(b, report, now, repair=False, keep_alive=lambda: None)
    report.duration_ms = round((time.perf_counter() - started) * 1000, 3)
    log.info(
        "stuck-job detector: %s",
        ", ".join(f"{k}={v}" for k, v in report.counts().items()),
        extra={"event": "stuck_jobs", "count": report.stuck, "duration_ms": report.duration_ms},
    )
    return report


def _scan(b: Backends, report: StuckReport, now: datetime, *, repair: bool, keep_alive: Callable[[], None]) -> None:
    live, dead, complete = _live_steps(b)
    report.complete_view = complete
    limit = timedelta(seconds=b.settings.stuck_step_seconds + b.settings.queue_lock_seconds)
    prefix = f"{layout.JOBS.name}/"
    for key in b.objects.list(prefix):
        job_id = key[len(prefix) : -len(".json")]
        try:
            job = b.jobs.get(job_id)
        except CorruptRecord as exc:
            report.unreadable += 1
            report.jobs.append(JobWhereabouts(job_id=job_id, state="unreadable", reason=str(exc)))
            log.error("job %s: record unreadable", job_id, extra={"event": "job_unreadable", "job_id": job_id})
            continue
        if job is None or job.finished:
            continue
        report.examined += 1
        if job.status == "waiting_for_approval" or _waiting_on_children(b, job):
            # Parked by design, with its reason on the record: an approval deadline or its sub-question jobs.
            report.in_flight += 1
            continue
        committed = b.checkpoints.steps(job.id)
        last = max(committed) if committed else 0
        step = last + 1
        if (job.id, step) in live:
            report.in_flight += 1
            continue
        idle = (now - _last_progress(b, job, last)).total_seconds()
        base = JobWhereabouts(
            job_id=job.id,
            tenant=job.tenant,
            status=job.status,
            next_step=step,
            idle_seconds=round(idle, 3),
            state="waiting",
        )
        if (job.id, step) in dead:
            why = job.dead_letter.description if job.dead_letter and job.dead_letter.step == step else "no note"
            report.jobs.append(
                base.model_copy(
                    update={
                        "state": "dead_lettered",
                        "reason": f"step {step} is dead-lettered ({why}); the sweep decides",
                    }
                )
            )
            continue
        if idle <= limit.total_seconds():
            continue  # just moved: its next message is about to be sent
        report.stuck += 1
        if not (repair and complete):
            reason = f"no message for step {step} and idle {idle:.0f}s (over {limit.total_seconds():.0f}s)"
            report.jobs.append(base.model_copy(update={"reason": reason}))
            continue
        with job_context(job_id=job.id, step=step, tenant=job.tenant):
            report.jobs.append(_repair(b, job, step, idle, base))
        if report.jobs[-1].state == "repaired":
            report.repaired += 1
        else:
            report.failed += 1
        keep_alive()


def _repair(b: Backends, job: Job, step: int, idle: float, base: JobWhereabouts) -> JobWhereabouts:
    moved_at = job.updated_at.isoformat()
    limit = b.settings.stuck_max_repairs

    def choose(history: ResubmissionLog) -> Resubmission:
        detail = f"no message for step {step} and nothing moved for {idle:.0f}s"
        if job.cancel_requested:
            return Resubmission(
                key="", step=step, action="cancelled", cause="stalled", reason="cancelled", detail=detail
            )
        if history.repaired >= limit:
            return Resubmission(
                key="",
                step=step,
                action="failed",
                cause="stalled",
                reason="stalled",
                detail=f"{detail}, after {history.repaired} repair(s) (STUCK_MAX_REPAIRS={limit})",
            )
        return Resubmission(
            key="",
            step=step,
            action="repaired",
            cause="stalled",
            message_id=f"{job.id}:{step}:s{history.repaired + 1}",
            detail=detail,
        )

    history, entry = ResubmissionStore(b.objects).decide(job.id, f"stall:{step}:{moved_at}", choose)
    if entry.action == "repaired" and entry.message_id:
        again = StepMessage(job_id=job.id, step=step, origin=entry.message_id)
        b.queue.send(again.model_dump_json().encode(), message_id=again.message_id, continuation=step > 1)

    def project(j: Job) -> bool:
        changed = lifecycle.note_repairs(j, history.repaired)
        if entry.action in ("failed", "cancelled"):
            changed |= lifecycle.end(j, entry.action, entry.reason or "stalled", entry.detail, entry.at)
        return changed

    updated = b.jobs.update(job.id, project) or job
    state: State = (
        "repaired" if entry.action == "repaired" else "cancelled" if entry.action == "cancelled" else "failed"
    )
    metrics.record_stuck_job(state)
    log.warning(
        "job %s stuck at step %s: %s (%s)",
        job.id,
        step,
        entry.action,
        entry.detail,
        extra={"event": f"job_stuck_{state}", "reason": entry.reason or "stalled"},
    )
    return base.model_copy(
        update={
            "state": state,
            "status": updated.status,
            "reason": entry.detail,
            "message_id": entry.message_id,
            "repairs": updated.repairs,
        }
    )
