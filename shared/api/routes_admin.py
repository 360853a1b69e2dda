"""/api/admin: the runbook's operations over HTTP, for operator keys only (a submitter key gets 403).

Each route is one call into the same services the timers and the CLI use (shared/operations.py,
shared/maintenance/*), so every way of running an operation does the same thing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from shared import operations
from shared.api.problems import Problem
from shared.api.security import OperatorDep
from shared.composition import get_backends
from shared.contracts import Job, JobStatus
from shared.maintenance import backup, checks, retention, sweep
from shared.maintenance.lease import LeaseHeld, LeaseLost

router = APIRouter(prefix="/api/admin", tags=["admin"])


@contextmanager
def _problems() -> Iterator[None]:
    """The maintenance errors as problem details (the job service's have app-wide handlers)."""
    try:
        yield
    except (LeaseHeld, LeaseLost) as exc:
        raise Problem(409, str(exc), kind="operation-running") from None
    except (operations.DeadLetterNotFound, backup.BackupNotFound) as exc:
        raise Problem(404, str(exc).strip("'\""), kind="not-found") from None
    except backup.RestoreMismatch as exc:
        raise Problem(422, f"restore refused: {exc}", kind="restore-mismatch") from None
    except (operations.JobNotResubmittable, operations.JobNotRerunnable) as exc:
        raise Problem(409, str(exc), kind="job-state") from None


# --- queue and dead letters ---------------------------------------------------------------------------


@router.get("/queue", response_model=operations.QueueStatus, summary="Message counts of the step queue")
def get_queue(caller: OperatorDep) -> operations.QueueStatus:
    return operations.queue_status(get_backends())


@router.get("/dlq", response_model=list[operations.DeadLetter], summary="Dead-lettered steps, oldest first")
def list_dead_letters(caller: OperatorDep,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[operations.DeadLetter]:
    return operations.dead_letters(get_backends(), limit)


@router.post("/dlq/sweep", response_model=sweep.SweepResult, summary="Run the dead-letter sweep now")
def run_sweep(caller: OperatorDep) -> sweep.SweepResult:
    with _problems():
        return sweep.sweep_dead_letters(get_backends())


@router.get("/dlq/{message_id}", response_model=operations.DeadLetter, summary="One dead-lettered step")
def get_dead_letter(message_id: str, caller: OperatorDep) -> operations.DeadLetter:
    with _problems():
        return operations.dead_letter(get_backends(), message_id)


@router.post("/dlq/{message_id}/resubmit", response_model=sweep.DeadLetterAction,
             summary="Send a dead-lettered step again (new message id), whatever its cause")
def resubmit_dead_letter(message_id: str, caller: OperatorDep) -> sweep.DeadLetterAction:
    with _problems():
        return operations.resubmit_dead_letter(get_backends(), message_id)


class Purged(BaseModel):
    purged: int = Field(description="Dead-lettered messages deleted; their jobs are left as they are.")


@router.delete("/dlq", response_model=Purged, summary="Purge the dead-letter queue")
def purge_dead_letters(caller: OperatorDep) -> Purged:
    with _problems():
        return Purged(purged=operations.purge_dead_letters(get_backends()))


# --- backups --------------------------------------------------------------------------------------------


@router.post("/backups", status_code=201, response_model=backup.BackupManifest, summary="Take a backup now")
def create_backup(caller: OperatorDep) -> backup.BackupManifest:
    with _problems():
        return backup.run_backup(get_backends())


@router.get("/backups", response_model=list[backup.BackupManifest], summary="Complete backups, newest first")
def list_backups(caller: OperatorDep) -> list[backup.BackupManifest]:
    return backup.list_backups(get_backends())


class RestoreRequest(BaseModel):
    backup_id: str = Field(max_length=40, description="An id from GET /api/admin/backups.")


@router.post("/restore", response_model=backup.RestoreResult,
             summary="Rebuild the knowledge index from a backup, verified against its manifest")
def restore_backup(body: RestoreRequest, caller: OperatorDep) -> backup.RestoreResult:
    with _problems():
        return backup.restore(get_backends(), body.backup_id)


# --- checks, usage, retention ---------------------------------------------------------------------------


@router.post("/checks", response_model=checks.OpsReport, summary="Run the weekly operations checks now")
def run_checks(caller: OperatorDep) -> checks.OpsReport:
    with _problems():
        return checks.run_weekly_checks(get_backends())


@router.get("/usage", response_model=operations.UsageReport, summary="Tokens by tenant against budget")
def get_usage(caller: OperatorDep,
              month: Annotated[str | None, Query(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")] = None) -> operations.UsageReport:
    return operations.usage(get_backends(), month)


@router.post("/retention", response_model=retention.RetentionResult, summary="Apply checkpoint retention now")
def run_retention(caller: OperatorDep) -> retention.RetentionResult:
    with _problems():
        return retention.apply_retention(get_backends())


# --- jobs of every tenant --------------------------------------------------------------------------------


@router.get("/jobs", response_model=operations.JobList, summary="Jobs of every tenant (or one), newest first")
def list_jobs(
    caller: OperatorDep,
    status: JobStatus | None = None,
    tenant: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> operations.JobList:
    return operations.list_jobs(get_backends(), status=status, tenant=tenant, limit=limit, cursor=cursor)


@router.post("/jobs/{job_id}/resubmit", status_code=202, response_model=operations.ResubmitResult,
             summary="Send the job's next step again with a new message id")
def resubmit_job(job_id: str, caller: OperatorDep) -> operations.ResubmitResult:
    with _problems():
        return operations.resubmit_job(get_backends(), job_id)


@router.post("/jobs/{job_id}/rerun", status_code=202, response_model=Job,
             summary="Run a finished job's task again as a new job (same tenant, task, session, policy)")
def rerun_job(job_id: str, caller: OperatorDep, response: Response) -> Job:
    with _problems():
        job = operations.rerun_job(get_backends(), job_id)
    response.headers["Location"] = f"/api/jobs/{job.id}"
    return job
