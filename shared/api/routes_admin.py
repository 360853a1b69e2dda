"""/api/admin: the runbook's operations over HTTP (a submitter key gets 403).

A tenant's operator sees and acts on its own tenant's jobs, dead letters and usage (another tenant's
ids do not exist for it, and `?tenant=` naming another tenant is 403); what acts on every tenant at
once or on the platform itself (the queue, sweep, purge, backups, restore, checks, retention) needs
an admin key. Each route's caller parameter states which (security.py).

Each route is one call into the same services the timers and the CLI use (shared/services/operations.py,
shared/maintenance/*), so every way of running an operation does the same thing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from shared.api.deps import BackendsDep
from shared.api.schema import problem_responses
from shared.api.security import AdminDep, TenantOperatorDep, may_act_for, tenant_filter
from shared.contracts import Job, JobStatus, Text
from shared.maintenance import backup, checks, retention, sweep
from shared.services import keys, operations
from shared.services.jobs import JobPage

router = APIRouter(prefix="/api/admin", tags=["admin"])


# --- queue and dead letters ---------------------------------------------------------------------------


@router.get("/queue", response_model=operations.QueueStatus, summary="Message counts of the step queue")
def get_queue(caller: AdminDep, b: BackendsDep) -> operations.QueueStatus:
    return operations.queue_status(b)


@router.get("/dlq", response_model=list[operations.DeadLetter], summary="Dead-lettered steps, oldest first")
def list_dead_letters(
    caller: TenantOperatorDep, b: BackendsDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[operations.DeadLetter]:
    return [d for d in operations.dead_letters(b, limit) if may_act_for(caller, d.tenant)]


@router.post(
    "/dlq/sweep",
    response_model=sweep.SweepResult,
    summary="Run the dead-letter sweep now",
    responses=problem_responses(409),
)
def run_sweep(caller: AdminDep, b: BackendsDep) -> sweep.SweepResult:
    return sweep.sweep_dead_letters(b)


@router.get("/dlq/{message_id}", response_model=operations.DeadLetter, summary="One dead-lettered step")
def get_dead_letter(message_id: str, caller: TenantOperatorDep, b: BackendsDep) -> operations.DeadLetter:
    return operations.dead_letter(b, message_id, tenant=tenant_filter(caller, None))


@router.post(
    "/dlq/{message_id}/resubmit",
    response_model=sweep.DeadLetterAction,
    summary="Send a dead-lettered step again (new message id), whatever its cause",
    responses=problem_responses(409),
)
def resubmit_dead_letter(message_id: str, caller: TenantOperatorDep, b: BackendsDep) -> sweep.DeadLetterAction:
    return operations.resubmit_dead_letter(b, message_id, tenant=tenant_filter(caller, None))


class Purged(BaseModel):
    purged: int = Field(description="Dead-lettered messages deleted; their jobs are left as they are.")


@router.delete("/dlq", response_model=Purged, summary="Purge the dead-letter queue")
def purge_dead_letters(caller: AdminDep, b: BackendsDep) -> Purged:
    return Purged(purged=operations.purge_dead_letters(b))


# --- backups --------------------------------------------------------------------------------------------


@router.post(
    "/backups",
    status_code=201,
    response_model=backup.BackupManifest,
    summary="Take a backup now",
    responses=problem_responses(409),
)
def create_backup(caller: AdminDep, b: BackendsDep) -> backup.BackupManifest:
    return backup.run_backup(b)


@router.get("/backups", response_model=list[backup.BackupManifest], summary="Complete backups, newest first")
def list_backups(caller: AdminDep, b: BackendsDep) -> list[backup.BackupManifest]:
    return backup.list_backups(b)


class RestoreRequest(BaseModel):
    backup_id: Text = Field(max_length=40, description="An id from GET /api/admin/backups.")


@router.post(
    "/restore",
    response_model=backup.RestoreResult,
    summary="Rebuild the knowledge index from a backup, verified against its manifest",
    responses=problem_responses(404, 409),
)
def restore_backup(body: RestoreRequest, caller: AdminDep, b: BackendsDep) -> backup.RestoreResult:
    return backup.restore(b, body.backup_id)


# --- checks, usage, retention ---------------------------------------------------------------------------


@router.post(
    "/checks",
    response_model=checks.OpsReport,
    summary="Run the weekly operations checks now",
    responses=problem_responses(409),
)
def run_checks(caller: AdminDep, b: BackendsDep) -> checks.OpsReport:
    return checks.run_weekly_checks(b)


@router.get(
    "/usage",
    response_model=operations.UsageReport,
    summary="Tokens by tenant against budget (an operator's own tenant only)",
)
def get_usage(
    caller: TenantOperatorDep,
    b: BackendsDep,
    month: Annotated[str | None, Query(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")] = None,
    top: Annotated[int, Query(ge=0, le=100, description="The month's N largest jobs.")] = 5,
    tenant: Annotated[str | None, Query(max_length=100, description="One tenant (admin: any; default every)")] = None,
) -> operations.UsageReport:
    return operations.usage(b, month, top=top, tenant=tenant_filter(caller, tenant))


@router.post(
    "/retention",
    response_model=retention.RetentionResult,
    summary="Apply retention now",
    responses=problem_responses(409),
)
def run_retention(caller: AdminDep, b: BackendsDep) -> retention.RetentionResult:
    return retention.apply_retention(b)


# --- jobs of every tenant --------------------------------------------------------------------------------


@router.get("/jobs", response_model=JobPage, summary="Jobs of every tenant (admin) or the operator's own, newest first")
def list_jobs(
    caller: TenantOperatorDep,
    b: BackendsDep,
    status: JobStatus | None = None,
    tenant: Annotated[str | None, Query(max_length=100)] = None,
    reason: Annotated[
        str | None,
        Query(
            max_length=100,
            description="Only jobs that ended with this error reason, "
            "e.g. citations_missing, policy_limit, budget_exceeded.",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> JobPage:
    return operations.list_jobs(
        b, status=status, tenant=tenant_filter(caller, tenant), reason=reason, limit=limit, cursor=cursor
    )


@router.post(
    "/jobs/{job_id}/resubmit",
    status_code=202,
    response_model=operations.ResubmitResult,
    summary="Send the job's next step again with a new message id",
    responses=problem_responses(409),
)
def resubmit_job(job_id: str, caller: TenantOperatorDep, b: BackendsDep) -> operations.ResubmitResult:
    return operations.resubmit_job(b, job_id, tenant=tenant_filter(caller, None))


@router.post(
    "/jobs/{job_id}/rerun",
    status_code=202,
    response_model=Job,
    summary="Run a finished job's task again as a new job (same tenant, task, session, policy)",
    responses=problem_responses(409),
)
def rerun_job(job_id: str, caller: TenantOperatorDep, b: BackendsDep, response: Response) -> Job:
    job = operations.rerun_job(b, job_id, tenant=tenant_filter(caller, None))
    response.headers["Location"] = f"/api/jobs/{job.id}"
    return job


# --- API keys (stored as hashes; `agentctl keys` does the same) -----------------------------------------------


class KeyRequest(BaseModel):
    tenant: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_\-.]+$")
    role: keys.Role = "submitter"
    expires_in: str | None = Field(
        None, max_length=10, description="A lifetime such as 30d, 12h, 2w; none: until revoked."
    )
    note: Text = Field("", max_length=200)


class KeyView(BaseModel):
    """A stored key without its hash."""

    id: str
    tenant: str
    role: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    note: str = ""


class IssuedKeyView(KeyView):
    key: str = Field(description="The key itself: returned this once, stored only as its hash.")


@router.post("/keys", status_code=201, response_model=IssuedKeyView, summary="Issue an API key (shown once)")
def create_key(body: KeyRequest, caller: AdminDep, b: BackendsDep) -> IssuedKeyView:
    expires = keys.parse_duration(body.expires_in) if body.expires_in else None
    issued = keys.issue(b, body.tenant, body.role, expires_in=expires, note=body.note)
    return IssuedKeyView(key=issued.key, **issued.record.model_dump(exclude={"sha256"}))


@router.get("/keys", response_model=list[KeyView], summary="Stored API keys, newest first (never a secret)")
def list_keys(
    caller: AdminDep, b: BackendsDep, tenant: Annotated[str | None, Query(max_length=100)] = None
) -> list[KeyView]:
    return [KeyView(**k.model_dump(exclude={"sha256"})) for k in keys.list_keys(b, tenant)]


@router.delete("/keys/{key_id}", response_model=KeyView, summary="Revoke a stored API key from the next request on")
def revoke_key(key_id: str, caller: AdminDep, b: BackendsDep) -> KeyView:
    return KeyView(**keys.revoke(b, key_id).model_dump(exclude={"sha256"}))
