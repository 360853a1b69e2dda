"""Human approval: a parked job resumes with exactly one next step, however often it is approved."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.contracts import ApprovalRequest, Job, StepMessage, Text
from shared.engine import job as lifecycle
from shared.engine.backends import Backends
from shared.errors import Conflict
from shared.services import jobs

__all__ = ["Decision", "NotWaiting", "decide"]


class Decision(BaseModel):
    """An approver's answer; the comment reaches the agent as data beside the tool's result."""

    model_config = ConfigDict(extra="forbid")

    comment: Text | None = Field(None, max_length=2000, description="Seen by the agent as data, never as instructions.")
    after_step: int | None = Field(
        None,
        ge=1,
        description="Which approval this decides (approvals[-1].after_step, or the waiting event's after_step). "
        "Send it, so that a retried request can never decide a later approval of the same job.",
    )


class NotWaiting(Conflict):
    kind = "not-waiting"
    fix = "only a job in status waiting_for_approval can be approved or rejected (GET /api/jobs/{id})"

    def __init__(self, job: Job, why: str) -> None:
        super().__init__(f"job {job.id} is {job.status}: {why}")
        self.job = job


def decide(
    b: Backends,
    tenant: str,
    job_id: str,
    decision: Literal["approved", "rejected"],
    comment: str | None,
    by: str,
    after_step: int | None = None,
) -> Job:
    """Record the decision and send the job's next step once.

    The decision is a compare-and-swap on the job record: of concurrent requests one wins; the
    others, and later repeats of the same decision, get the job as it is and re-send the same
    step message (message id "{job}:{n}", dropped by duplicate detection; a step that ran already
    only re-does its idempotent follow-up). A different decision after the first is a conflict.
    With after_step, only the approval after that step is decided, never a later one.
    """
    job = jobs.get(b, tenant, job_id)
    won = [False]

    def transition(j: Job) -> bool:
        pending = j.pending_approval
        targeted = after_step is None or (pending is not None and pending.after_step == after_step)
        won[0] = targeted and lifecycle.decide(j, decision, comment, by)
        return won[0]

    updated = b.jobs.update(job_id, transition) or job
    if won[0]:
        asked = updated.approvals[-1]
    else:  # nothing (or another approval) was pending: a repeat, a late one, or a job that never waited
        asked = _earlier(updated, decision, after_step)
    if updated.step == asked.after_step and not updated.finished:  # the next step has not committed: (re-)send it
        nxt = StepMessage(job_id=job_id, step=asked.after_step + 1)
        b.queue.send(nxt.model_dump_json().encode(), message_id=nxt.message_id, continuation=nxt.step > 1)
    return b.jobs.whole(updated)


def _earlier(job: Job, decision: str, after_step: int | None) -> ApprovalRequest:
    """The approval a repeated request meant, when it was decided the same way; NotWaiting otherwise."""
    targets = [a for a in job.approvals if after_step is None or a.after_step == after_step]
    if not targets:
        raise NotWaiting(job, f"it has no approval after step {after_step}" if after_step else "it never waited")
    asked = targets[-1]
    if asked.decision == decision:
        return asked
    if job.finished:
        raise NotWaiting(job, f"it ended ({job.error.reason if job.error else job.status})")
    if asked.decision is None:
        raise NotWaiting(job, f"the pending approval follows step {job.approvals[-1].after_step}, not {after_step}")
    raise NotWaiting(job, f"the approval after step {asked.after_step} was already {asked.decision}")
