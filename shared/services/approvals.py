"""Human approval: a parked job resumes with exactly one next step, however often it is approved."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.contracts import Job, StepMessage
from shared.engine import job as lifecycle
from shared.engine.backends import Backends
from shared.errors import Conflict
from shared.services import jobs

__all__ = ["Decision", "NotWaiting", "decide"]


class Decision(BaseModel):
    """An approver's answer; the comment reaches the agent as data beside the tool's result."""

    model_config = ConfigDict(extra="forbid")

    comment: str | None = Field(None, max_length=2000, description="Seen by the agent as data, never as instructions.")


class NotWaiting(Conflict):
    kind = "not-waiting"
    fix = "only a job in status waiting_for_approval can be approved or rejected (GET /api/jobs/{id})"

    def __init__(self, job: Job, why: str) -> None:
        super().__init__(f"job {job.id} is {job.status}: {why}")
        self.job = job


def decide(
    b: Backends, tenant: str, job_id: str, decision: Literal["approved", "rejected"], comment: str | None, by: str
) -> Job:
    """Record the decision and send the job's next step once.

    The decision is a compare-and-swap on the job record: of concurrent requests one wins; the
    others, and later repeats of the same decision, get the job as it is and re-send the same
    step message (message id "{job}:{n}", dropped by duplicate detection; a step that ran already
    only re-does its idempotent follow-up). A different decision after the first is a conflict.
    """
    job = jobs.get(b, tenant, job_id)
    won = [False]

    def transition(j: Job) -> bool:
        won[0] = lifecycle.decide(j, decision, comment, by)
        return won[0]

    updated = b.jobs.update(job_id, transition) or job
    if not won[0]:  # nothing was pending: a repeat, a late one, or a job that never waited
        last = updated.approvals[-1] if updated.approvals else None
        if last is None:
            raise NotWaiting(updated, "it is not waiting for approval")
        if last.decision != decision:
            if updated.finished:
                raise NotWaiting(updated, f"it ended ({updated.error.reason if updated.error else updated.status})")
            raise NotWaiting(updated, f"the approval after step {last.after_step} was already {last.decision}")
    asked = updated.approvals[-1]
    if updated.step == asked.after_step and not updated.finished:  # the next step has not committed yet: (re-)send it
        nxt = StepMessage(job_id=job_id, step=asked.after_step + 1)
        b.queue.send(nxt.model_dump_json().encode(), message_id=nxt.message_id)
    return updated
