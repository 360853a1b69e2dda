"""The job service: submit, read, list, cancel, and fetch reports, always within one tenant."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agents.policy import resolve, tenant_limits
from shared.contracts import Job, JobStatus, PolicyOverrides, Report, StepMessage, Text, utcnow
from shared.engine import job as lifecycle
from shared.engine import layout, provenance, steps
from shared.engine.backends import Backends
from shared.engine.ledger import BUDGET_STALENESS_SECONDS
from shared.engine.pricing import budget_exhausted
from shared.errors import Conflict, NotFound, TooManyRequests
from shared.ports import PreconditionFailed
from shared.services import webhooks

log = logging.getLogger("agent.jobs")


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Text = Field(min_length=1, max_length=4000, description="The research question.")
    session_id: Text | None = Field(
        None, pattern=r"^[A-Za-z0-9_\-.]{1,100}$", description="Jobs of one session share short-term memory."
    )
    policy: PolicyOverrides | None = Field(None, description="Narrows the tenant's policy for this job.")
    callback_url: Text | None = Field(
        None,
        max_length=2000,
        description="Signed webhooks (job.report_ready, job.succeeded|failed|cancelled) go here; the host must be on "
        "the tenant's allow-list. Without it, the tenant's default URL, if any.",
    )

    @field_validator("task")
    @classmethod
    def _not_blank(cls, task: str) -> str:
        if not task.strip():
            raise ValueError("task must not be blank")
        return task.strip()


class JobNotFound(NotFound):
    pass


class IdempotencyConflict(Conflict):
    kind = "idempotency-conflict"
    fix = "send a new Idempotency-Key for a different request"


class JobNotFinished(Conflict):
    kind = "job-not-finished"
    fix = "wait for the job to finish (GET /api/jobs/{id}, `agentctl jobs show <id>`)"

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} is {job.status}; the report exists once it has finished")
        self.job = job


class JobAlreadyFinished(Conflict):
    kind = "job-finished"

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} already {job.status}")
        self.job = job


class BudgetExhausted(TooManyRequests):
    kind = "budget-exceeded"
    fix = "raise the tenant's budget (TENANT_TOKEN_BUDGETS, TENANT_COST_BUDGETS) or wait for next month"


def new_job_id() -> str:
    # Time-ordered prefix keeps ids roughly sortable, the random tail keeps them unguessable.
    return f"job-{int(utcnow().timestamp() * 1000):x}-{secrets.token_hex(8)}"


def _enqueue_first_step(b: Backends, job: Job) -> None:
    first = StepMessage(job_id=job.id, step=1)
    b.queue.send(first.model_dump_json().encode(), message_id=first.message_id)


def submit(
    b: Backends,
    tenant: str,
    request: JobRequest,
    idempotency_key: str | None = None,
    *,
    schedule_id: str | None = None,
) -> tuple[Job, bool]:
    """Create and enqueue a job; (job, created). A replayed Idempotency-Key returns the first job."""
    if request.callback_url:
        webhooks.check_callback(b.settings, tenant, request.callback_url)
    limits = tenant_limits(b.settings.policy_defaults, b.settings.tenant_policies.get(tenant))
    policy = resolve(limits, request.policy)
    # The same second-fresh total the step's budget check reads: one small record, whatever the month's volume.
    spent = budget_exhausted(b, tenant, max_age=BUDGET_STALENESS_SECONDS)
    if spent is not None:
        raise BudgetExhausted(
            f"tenant {tenant} has used {spent}; new jobs are refused until next month or until the budget is raised"
        )
    job_id = new_job_id()
    if idempotency_key:
        fingerprint = hashlib.sha256(request.model_dump_json().encode()).hexdigest()
        key = layout.idempotency_key(tenant, hashlib.sha256(idempotency_key.encode()).hexdigest())
        # "at" dates the record for retention (IDEMPOTENCY_RETENTION_HOURS): the replay window.
        record = json.dumps({"job_id": job_id, "request": fingerprint, "at": time.time()}).encode()
        try:
            b.objects.put_if_absent(key, record)
        except PreconditionFailed:
            found = b.objects.get(key)
            earlier = json.loads(found.data) if found else {}
            if earlier.get("request") != fingerprint:
                raise IdempotencyConflict("this Idempotency-Key was used with a different request body") from None
            job = b.jobs.get(earlier["job_id"])
            if job is None:  # the first attempt died between its two writes: finish its work
                job = _create(b, earlier["job_id"], tenant, request, policy, idempotency_key, schedule_id)
            elif job.status == "queued" and job.step == 0:
                _enqueue_first_step(b, job)  # duplicate detection drops it if it was sent
            return job, False
    return _create(b, job_id, tenant, request, policy, idempotency_key, schedule_id), True


def _create(  # type: ignore[no-untyped-def]
    b: Backends, job_id: str, tenant: str, request: JobRequest, policy, key: str | None, schedule_id: str | None
) -> Job:
    job = Job(
        id=job_id,
        tenant=tenant,
        task=request.task,
        session_id=request.session_id,
        policy=policy,
        idempotency_key=key,
        callback_url=request.callback_url,
        schedule_id=schedule_id,
    )
    try:
        b.jobs.create(job)
    except PreconditionFailed:
        # A concurrent submit with the same Idempotency-Key (two schedule firings) created it first.
        job = b.jobs.get(job_id) or job
    try:
        _enqueue_first_step(b, job)
    except Exception:
        if key:
            _keep_for_retry(job)
        else:
            _roll_back(b, job)
        raise
    return job


def _keep_for_retry(job: Job) -> None:
    """A keyed submission whose first step could not be enqueued stays queued at step 0, key and all.

    Rolling it back would race: another submitter with the same key (a second runtime firing the
    same schedule, a client retrying at once) may have read the key already and recreate the job
    under it while the key is deleted, and the next attempt would then mint a second job under one
    key. Kept, the key always names one job: a retry with it re-sends the first step (duplicate
    detection drops a copy), and without a retry the stuck-job detector sends it.
    """
    log.warning(
        "job %s: first step not enqueued; kept queued for a retry with its Idempotency-Key",
        job.id,
        extra={"event": "submit_kept_for_retry", "job_id": job.id, "tenant": job.tenant},
    )


def _roll_back(b: Backends, job: Job) -> None:
    """Undo an unkeyed submission whose first step could not be enqueued: the caller is told 503, so no job exists.

    If storage fails here too, the record stays queued at step 0 and the stuck-job detector sends its
    first step later.
    """
    try:
        b.objects.delete(layout.job_key(job.id))
        b.jobs.forget_tenant_marker(job)
    except Exception:  # noqa: BLE001 - the original failure is what the caller must see
        log.warning(
            "job %s: first step not enqueued and the record not rolled back; the stuck-job detector will send it",
            job.id,
            extra={"event": "submit_rollback_failed", "job_id": job.id, "tenant": job.tenant},
        )
    else:
        log.warning(
            "job %s: first step could not be enqueued; submission rolled back",
            job.id,
            extra={"event": "submit_rolled_back", "job_id": job.id, "tenant": job.tenant},
        )


def get(b: Backends, tenant: str, job_id: str) -> Job:
    job = b.jobs.get(job_id) if _plausible(job_id) else None
    if job is None or job.tenant != tenant:  # another tenant's job does not exist for this caller
        raise JobNotFound(f"no job {job_id}")
    return job


# \w is str.isalnum() or "_": letters and digits of any script, as ids may hold, "-" besides.
_PLAUSIBLE_ID = re.compile(r"[\w-]{1,100}")


def _plausible(job_id: str) -> bool:
    return _PLAUSIBLE_ID.fullmatch(job_id) is not None


class JobPage(BaseModel):
    """One page of jobs, newest first."""

    jobs: list[Job]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next page; absent on the last.")


def list_jobs(b: Backends, tenant: str, *, status: JobStatus | None, limit: int, cursor: str | None) -> JobPage:
    pairs = b.jobs.list_for_tenant(tenant, after=cursor)
    return page_of(((marker, job) for marker, job in pairs if status is None or job.status == status), limit)


def page_of(pairs: Iterable[tuple[str, Job]], limit: int) -> JobPage:
    """The first `limit` (cursor, job) pairs as a page; its cursor resumes after the last one."""
    page: list[Job] = []
    last: str | None = None
    for marker, job in pairs:
        if len(page) == limit:
            return JobPage(jobs=page, next_cursor=last)
        page.append(job)
        last = marker
    return JobPage(jobs=page, next_cursor=None)


def cancel(b: Backends, tenant: str, job_id: str) -> Job:
    job = get(b, tenant, job_id)
    if job.finished:
        raise JobAlreadyFinished(job)
    updated = b.jobs.update(job_id, lifecycle.request_cancel) or job
    if updated.finished:  # a job parked for approval ends at once
        steps.job_finished(b, updated)
    # A deep job's tree stops together; children not yet created start cancelled (engine/fanout.spawn).
    for child in updated.children:
        b.jobs.update(child, lifecycle.request_cancel)
    return b.jobs.whole(updated)


def report(b: Backends, tenant: str, job_id: str) -> tuple[Job, Report]:
    job = get(b, tenant, job_id)
    if not job.finished:
        raise JobNotFinished(job)
    found = b.reports.get(job_id)
    if found is None:
        raise JobNotFound(
            f"job {job_id} {job.status} without a report"
            + (f" ({job.error.reason}: {job.error.detail})" if job.error else "")
        )
    return job, found


class ProvenanceMissing(NotFound):
    fix = "provenance is recorded for jobs that finish from this release on; older jobs have none"


def provenance_of(b: Backends, job: Job) -> provenance.Provenance:
    """The job's provenance: JobNotFinished while it runs, ProvenanceMissing for jobs finished before it existed."""
    if not job.finished:
        raise JobNotFinished(job)
    found = provenance.load(b.objects, job.id)
    if found is None:
        raise ProvenanceMissing(f"job {job.id} {job.status} without a provenance record")
    return found


def job_provenance(b: Backends, tenant: str, job_id: str) -> provenance.Provenance:
    """The caller's job's provenance (another tenant's job does not exist for this caller)."""
    return provenance_of(b, get(b, tenant, job_id))
