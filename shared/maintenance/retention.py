"""Retention: checkpoints of jobs that finished long ago are deleted, all but the last one.

What stays, and why:
- the last checkpoint: it holds the outcome, the total usage and the final agent state, so
  the job's verdict and token count can still be rebuilt from storage;
- the job record (status, progress per step, usage, error) and the report (what the caller
  asked for); both are small.
A job's age is counted from finished_at; CHECKPOINT_RETENTION_DAYS sets the age. Unfinished
jobs are never touched: their checkpoints are the state the next step reads. Timer run records
(ops/runs/, one per occurrence: ~100 a day) older than the same age go too.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from pydantic import BaseModel, Field

from shared.contracts import utcnow
from shared.engine.backends import Backends
from shared.maintenance.lease import exclusive

log = logging.getLogger("agent.maintenance")

LEASE = "retention"


class RetentionResult(BaseModel):
    cutoff: datetime = Field(description="Jobs that finished before this lose all checkpoints but their last.")
    jobs_examined: int = 0
    jobs_pruned: int = Field(0, description="Finished jobs whose older checkpoints were deleted in this run.")
    checkpoints_deleted: int = 0
    run_records_deleted: int = Field(0, description="Timer run records (ops/runs/) older than the cutoff.")
    duration_ms: float = 0.0

    def counts(self) -> dict[str, int]:
        return {
            "jobs_examined": self.jobs_examined,
            "jobs_pruned": self.jobs_pruned,
            "checkpoints_deleted": self.checkpoints_deleted,
            "run_records_deleted": self.run_records_deleted,
        }


def apply_retention(b: Backends, now: datetime | None = None) -> RetentionResult:
    """Delete old finished jobs' checkpoints before their last full snapshot (under the retention lease)."""
    started = time.perf_counter()
    now = now or utcnow()
    result = RetentionResult(cutoff=now - timedelta(days=b.settings.checkpoint_retention_days))
    with exclusive(b.objects, LEASE) as lease:
        for job in b.jobs.all():
            result.jobs_examined += 1
            if not job.finished or job.finished_at is None or job.finished_at >= result.cutoff:
                continue
            steps = b.checkpoints.prunable(job.id)  # all before the last full snapshot
            if not steps:
                continue
            for n in steps:
                if b.checkpoints.delete(job.id, n):
                    result.checkpoints_deleted += 1
            result.jobs_pruned += 1
            lease.keep_alive()
        oldest_kept = f"{result.cutoff:%Y%m%dT%H%M%SZ}.json"
        for key in list(b.objects.list("ops/runs/")):
            if key.rsplit("/", 1)[1] < oldest_kept and b.objects.delete(key):  # names are UTC stamps
                result.run_records_deleted += 1
    result.duration_ms = round((time.perf_counter() - started) * 1000, 3)
    log.info(
        "retention: %s checkpoint(s) of %s job(s) finished before %s deleted (%s jobs examined), "
        "%s timer run record(s) deleted",
        result.checkpoints_deleted,
        result.jobs_pruned,
        result.cutoff.isoformat(timespec="seconds"),
        result.jobs_examined,
        result.run_records_deleted,
        extra={"event": "retention_done", "count": result.checkpoints_deleted},
    )
    return result
