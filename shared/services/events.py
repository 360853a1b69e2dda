"""A job's progress as a numbered list of events, derived from its record (itself a projection of the
job's checkpoints) and its newest checkpoint: nothing is written for an event, so nothing can be lost
or told twice.

Event n of a job is always the same event: the record only grows at its end (steps are appended in
order, approvals after the step they follow, the ending last), so the numbering is stable and a
client that saw events 1..k resumes with exactly k+1.. on any instance, after any restart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from shared.contracts import Checkpoint, Job
from shared.engine.backends import Backends
from shared.engine.job import summary
from shared.services import jobs

__all__ = ["EventPage", "JobEvent", "derive", "page"]

EventType = Literal[
    "queued", "step", "waiting_for_approval", "approved", "rejected", "report_ready", "succeeded", "failed", "cancelled"
]


class JobEvent(BaseModel):
    """One state change of a job."""

    id: int = Field(description="1, 2, 3, ... per job; send the last one seen as Last-Event-ID or ?after=.")
    type: EventType
    at: datetime
    data: dict[str, Any] = Field(default_factory=dict)


class EventPage(BaseModel):
    """Events of a job after a cursor."""

    job_id: str
    status: str
    events: list[JobEvent]
    next_after: int = Field(description="Pass as ?after= (or Last-Event-ID) to continue.")
    ended: bool = Field(description="True when the terminal event is in this page or before it: nothing follows.")


def derive(job: Job, committed: Checkpoint | None = None) -> list[JobEvent]:
    """Every event of the job so far, numbered from 1.

    `committed` is checkpoint job.step+1 when it is committed but not yet folded into the record
    (the projection follows the commit by a moment, or a crash delayed it): its step event comes
    now, at the place the record will give it.
    """
    out: list[tuple[str, datetime, dict[str, Any]]] = [("queued", job.created_at, {"task": job.task})]
    progress = list(job.progress)
    if committed is not None and committed.step == job.step + 1 and not job.finished and not job.pending_approval:
        progress.append(summary(committed))
    for p in progress:
        if job.finished and job.finished_at is not None and p.at > job.finished_at:
            continue  # committed after the job was ended out of band: not part of its story
        out.append(("step", p.at, p.model_dump(mode="json")))
        for a in job.approvals:
            if a.after_step != p.step:
                continue
            out.append(
                (
                    "waiting_for_approval",
                    a.requested_at,
                    {"after_step": a.after_step, "pending": a.pending, "deadline": a.deadline.isoformat()},
                )
            )
            if a.decision in ("approved", "rejected") and a.decided_at is not None:
                out.append((a.decision, a.decided_at, {"after_step": a.after_step, "comment": a.comment}))
    if job.finished:
        at = job.finished_at or job.updated_at
        if job.status == "succeeded":
            out.append(("report_ready", at, {"report": f"/api/jobs/{job.id}/report"}))
        error = job.error.model_dump() if job.error else None
        out.append((job.status, at, {"error": error, "step": job.step, "usage": job.usage.model_dump()}))
    return [JobEvent(id=n, type=t, at=at, data=data) for n, (t, at, data) in enumerate(out, start=1)]


def page(b: Backends, tenant: str, job_id: str, after: int = 0, limit: int = 1000) -> EventPage:
    """The tenant's job's events after `after` (JobNotFound for another tenant's job)."""
    job = jobs.get(b, tenant, job_id)
    # The next checkpoint, if committed, shows a step the record has not projected yet (another process's commit).
    ahead = None if job.finished else b.checkpoints.get(job.id, job.step + 1)
    every = derive(job, ahead)
    chosen = [e for e in every if e.id > after][:limit]
    last = chosen[-1].id if chosen else max(after, 0)
    return EventPage(
        job_id=job.id,
        status=job.status,
        events=chosen,
        next_after=last,
        ended=job.finished and last >= len(every),
    )
