"""The job record's lifecycle: every change to a Job's fields is one of these named transitions.

The record is a projection of the job's checkpoints plus what happened around them (cancel
requests, dead letters, re-submissions, endings decided by the sweep). Each transition takes
the record, changes it in place and returns whether it changed anything, so it can run inside
`JobStore.update` (an optimistic update that may retry) and a repeated call writes nothing.
Nothing outside this module assigns a Job's fields.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from shared.contracts import ApprovalRequest, Checkpoint, DeadLetterNote, Job, JobError, StepSummary, utcnow

__all__ = [
    "adopt_children",
    "apply_checkpoint",
    "decide",
    "end",
    "expire_approval",
    "park",
    "note_dead_letter",
    "note_handled",
    "note_repairs",
    "note_resubmissions",
    "request_cancel",
    "stamped",
    "summary",
]


def apply_checkpoint(
    job: Job, cp: Checkpoint, load: Callable[[int], Checkpoint | None], paged_through: int = 0
) -> bool:
    """Fold checkpoint cp (and any missed before it, read through load) into the record.

    False when the record already shows cp: projections only move forward by step.
    paged_through: the last step of the progress pages already written in their own objects
    (JobStore.seal_pages); the record drops its lines up to there, so it stays small.
    """
    if cp.step <= job.step:
        return False
    for n in range(job.step + 1, cp.step):
        missed = load(n)
        if missed is not None:
            job.progress.append(summary(missed))
    job.progress.append(summary(cp))
    if paged_through and job.progress[0].step <= paged_through:
        job.progress = [p for p in job.progress if p.step > paged_through]
    if job.dead_letter is not None and job.dead_letter.handled is None and job.dead_letter.step <= cp.step:
        # The step committed after all (its last delivery was noted in advance): nothing was dead-lettered.
        job.dead_letter = None
    job.step = cp.step
    job.usage = cp.total_usage
    job.started_at = job.started_at or cp.created_at - timedelta(milliseconds=cp.duration_ms)
    if job.finished:  # ended out of band (sweep, operator); keep its verdict
        return True
    if cp.outcome is not None:
        job.status = cp.outcome.status
        job.error = cp.outcome.error
        job.finished_at = cp.created_at
    else:
        job.status = "running"
    return True


def stamped(job: Job) -> Job:
    """The record as written: every write sets updated_at."""
    job.updated_at = utcnow()
    return job


def summary(cp: Checkpoint) -> StepSummary:
    return StepSummary(
        step=cp.step,
        kind=cp.kind,
        summary=cp.summary,
        tokens=cp.usage.total_tokens,
        duration_ms=round(cp.duration_ms, 3),
        at=cp.created_at,
    )


def adopt_children(job: Job, children: list[str]) -> bool:
    """Record a deep job's sub-question jobs (once planned, the list never changes)."""
    if job.children == children or job.children:
        return False
    job.children = list(children)
    return True


def request_cancel(job: Job) -> bool:
    """Ask the job to stop at its next step boundary; a job parked for approval has none, so it ends now."""
    if job.finished:
        return False
    if job.pending_approval is not None:
        job.cancel_requested = True
        return end(job, "cancelled", "cancelled", "cancelled by request while waiting for approval")
    if job.cancel_requested:
        return False
    job.cancel_requested = True
    return True


def park(job: Job, after_step: int, pending: list[str], deadline: datetime) -> bool:
    """Stop the job after step after_step until a human decides on the pending tool calls.

    Once per step: a redelivered step finds its request and parks nothing again.
    """
    if job.finished or any(a.after_step == after_step for a in job.approvals):
        return False
    job.approvals.append(ApprovalRequest(after_step=after_step, pending=pending, deadline=deadline))
    job.status = "waiting_for_approval"
    return True


def decide(job: Job, decision: str, comment: str | None, by: str, at: datetime | None = None) -> bool:
    """Record a human's approved/rejected on the pending approval; False when nothing was pending.

    Only the first decision counts: a repeated or concurrent one finds nothing pending.
    """
    pending = job.pending_approval
    if pending is None:
        return False
    if decision not in ("approved", "rejected"):
        raise ValueError(f"a human decides approved or rejected, not {decision}")
    pending.decision = "approved" if decision == "approved" else "rejected"
    pending.comment = comment
    pending.decided_by = by
    pending.decided_at = at or utcnow()
    job.status = "running"
    return True


def expire_approval(job: Job, after_step: int, at: datetime | None = None) -> bool:
    """End the job when the approval after after_step is still pending at its deadline."""
    pending = job.pending_approval
    at = at or utcnow()
    if pending is None or pending.after_step != after_step or at < pending.deadline:
        return False
    pending.decision = "timed_out"
    pending.decided_at = at
    waited = (at - pending.requested_at).total_seconds()
    return end(
        job,
        "failed",
        "approval_timeout",
        f"no decision on {', '.join(pending.pending)} within {waited:.0f} s (policy.approval_timeout_seconds)",
        at,
    )


def end(job: Job, status: str, reason: str, detail: str, at: datetime | None = None) -> bool:
    """End an unfinished job out of band (failed or cancelled), with its reason."""
    if job.finished:
        return False
    if status not in ("failed", "cancelled"):
        raise ValueError(f"a job ends out of band as failed or cancelled, not {status}")
    job.status = "failed" if status == "failed" else "cancelled"
    job.error = JobError(reason=reason, detail=detail)
    job.finished_at = at or utcnow()
    return True


def note_dead_letter(job: Job, note: DeadLetterNote) -> bool:
    """Record why a step is about to be dead-lettered (the sweep reads note.cause)."""
    if job.dead_letter == note:
        return False
    job.dead_letter = note
    return True


def note_handled(job: Job, step: int, key: str, action: str, resubmitted_as: str | None) -> bool:
    """Mark the step's dead-letter note as handled by the re-submission log entry key."""
    note = job.dead_letter
    if note is None or note.step != step or note.handled == key:
        return False
    job.dead_letter = note.model_copy(update={"handled": key, "action": action, "resubmitted_as": resubmitted_as})
    return True


def note_resubmissions(job: Job, count: int) -> bool:
    """Set the re-submission count from the job's re-submission log (a projection, never incremented)."""
    if job.resubmissions == count:
        return False
    job.resubmissions = count
    return True


def note_repairs(job: Job, count: int) -> bool:
    """Set the stuck-job repair count from the job's re-submission log (a projection, never incremented)."""
    if job.repairs == count:
        return False
    job.repairs = count
    return True
