"""Operator actions shared by the admin API and the CLI: the queue and its dead letters, job
re-submission and re-runs, token usage, and every tenant's jobs.

These see all tenants (operators only); the job service (shared/jobs.py) is the tenant-scoped side.
Dead-letter actions take the dead-letters lease, so they never race the sweep over one message.
"""

from __future__ import annotations

import heapq
import logging
import re
import secrets
import time
from datetime import datetime

from pydantic import BaseModel, Field, ValidationError

from shared.contracts import Job, JobStatus, PolicyOverrides, StepMessage, Usage
from shared.engine import job as lifecycle
from shared.engine import layout
from shared.engine.backends import Backends
from shared.engine.ledger import BUDGET_WARNING_RATIO, month_of
from shared.engine.pricing import price_usage
from shared.errors import Conflict, CorruptRecord, InvalidRequest, NotFound
from shared.maintenance.lease import exclusive
from shared.maintenance.resubmissions import JobNotResubmittable, Resubmission, ResubmissionStore
from shared.maintenance.sweep import LEASE as DEAD_LETTERS_LEASE
from shared.maintenance.sweep import DeadLetterAction, classify, handle_dead_letter
from shared.ports import QueueMessage
from shared.services import jobs
from shared.services.jobs import JobPage

log = logging.getLogger("agent.operations")

__all__ = ["DeadLetterNotFound", "JobNotRerunnable", "JobNotResubmittable"]

PEEK_MAX = 1000
FIND_LOCK_SECONDS = 2.0


class DeadLetterNotFound(NotFound):
    fix = "list the dead-letter queue with `agentctl dlq list` (GET /api/admin/dlq)"


class JobNotRerunnable(Conflict):
    """The job is still running; a re-run beside it would do the same work twice."""

    kind = "job-state"


# --- the queue --------------------------------------------------------------------------------------


class QueueStatus(BaseModel):
    queue: str
    active: int = Field(description="Messages waiting to be processed (the runbook's queue length).")
    scheduled: int = Field(description="Step retries scheduled for later.")
    dead_lettered: int


def queue_status(b: Backends) -> QueueStatus:
    counts = b.queue.counts()
    return QueueStatus(
        queue=b.settings.agent_jobs_queue,
        active=counts.active,
        scheduled=counts.scheduled,
        dead_lettered=counts.dead_lettered,
    )


# --- dead letters -----------------------------------------------------------------------------------


class DeadLetter(BaseModel):
    message_id: str
    sequence_number: int
    job_id: str | None = None
    step: int | None = None
    tenant: str | None = None
    job_status: JobStatus | None = Field(None, description="None when the job no longer exists.")
    delivery_count: int
    enqueued_at: datetime | None = None
    reason: str | None = Field(None, description="The broker's dead-letter reason.")
    description: str | None = Field(None, description="The broker's dead-letter description.")
    failure: str | None = Field(None, description="The exception of the step's last delivery (job's note).")
    cause: str | None = Field(
        None, description="What the sweep will judge it: transient, lost_lock, permanent, poison, policy or budget."
    )


def _view(message: QueueMessage, b: Backends, known: dict[str, Job | None]) -> DeadLetter:
    view = DeadLetter(
        message_id=message.message_id,
        sequence_number=message.sequence_number,
        delivery_count=message.delivery_count,
        enqueued_at=message.enqueued_at,
        reason=message.dead_letter_reason,
        description=message.dead_letter_description,
    )
    try:
        msg = StepMessage.model_validate_json(message.body)
    except ValidationError:
        return view
    view.job_id, view.step = msg.job_id, msg.step
    if msg.job_id not in known:
        try:
            known[msg.job_id] = b.jobs.get(msg.job_id)
        except CorruptRecord as exc:  # shown, not raised: one unreadable record must not hide the others
            view.failure = str(exc)
            return view
    job = known[msg.job_id]
    if job is not None:
        view.tenant, view.job_status = job.tenant, job.status
        note = job.dead_letter if job.dead_letter and job.dead_letter.step == msg.step else None
        view.failure = note.description if note else None
        if not job.finished:
            view.cause = classify(job, msg.step, message)[0]
    return view


def dead_letters(b: Backends, max_count: int = 100) -> list[DeadLetter]:
    """Dead-lettered messages, oldest first, each with its job and how the sweep will judge it."""
    known: dict[str, Job | None] = {}
    return [_view(m, b, known) for m in b.queue.peek_dead_letters(max_count)]


def dead_letter(b: Backends, message_id: str, *, tenant: str | None = None) -> DeadLetter:
    """One dead letter; a tenant-scoped caller (tenant given) finds only its own tenant's."""
    for m in b.queue.peek_dead_letters(PEEK_MAX):
        if m.message_id == message_id:
            view = _view(m, b, {})
            if tenant is None or view.tenant == tenant:
                return view
    raise DeadLetterNotFound(f"no dead-lettered message {message_id}")


def _receive(b: Backends, message_id: str) -> QueueMessage:
    """Lock the dead letter with this message id, waiting out a lock a previous look left on it.

    The port cannot receive one chosen message, so those ahead of it are locked on the way and
    stay locked for FIND_LOCK_SECONDS (on Service Bus, the queue's lock duration); a sweep in
    that window leaves them for its next run. Small batches keep that set small.
    """
    dead_letter(b, message_id)  # DeadLetterNotFound before any lock is taken
    deadline = time.monotonic() + FIND_LOCK_SECONDS + 2
    while time.monotonic() < deadline:
        batch = b.queue.receive_dead_letters(10, lock_seconds=FIND_LOCK_SECONDS)
        for m in batch:
            if m.message_id == message_id:
                return m
        if not batch:
            time.sleep(0.2)
    raise DeadLetterNotFound(f"dead-lettered message {message_id} is locked by another operation; try again shortly")


def resubmit_dead_letter(b: Backends, message_id: str, *, tenant: str | None = None) -> DeadLetterAction:
    """Send a dead-lettered step again under a new message id, whatever its cause; then complete it."""
    dead_letter(b, message_id, tenant=tenant)  # DeadLetterNotFound for another tenant's, before any lock
    with exclusive(b.objects, DEAD_LETTERS_LEASE):
        return handle_dead_letter(b, _receive(b, message_id), operator=True)


def purge_dead_letters(b: Backends) -> int:
    """Delete every dead-lettered message (each logged with its job); their jobs stay as they are."""
    purged: set[int] = set()
    with exclusive(b.objects, DEAD_LETTERS_LEASE) as lease:
        while True:
            batch = [m for m in b.queue.receive_dead_letters(100, lock_seconds=60.0) if m.sequence_number not in purged]
            if not batch:
                break
            for m in batch:
                b.queue.complete_dead_letter(m)
                purged.add(m.sequence_number)
                log.warning(
                    "purged dead-lettered message %s (%s)",
                    m.message_id,
                    m.dead_letter_reason,
                    extra={"event": "dead_letter_purged", "job_id": m.message_id.split(":", 1)[0]},
                )
            lease.keep_alive()
    log.warning("purged %s dead-lettered message(s)", len(purged), extra={"event": "dlq_purged", "count": len(purged)})
    return len(purged)


# --- jobs -------------------------------------------------------------------------------------------


class ResubmitResult(BaseModel):
    job_id: str
    step: int = Field(description="The step sent again: the one after the last committed checkpoint.")
    message_id: str = Field(description="The new message's id (a new id, so duplicate detection keeps it).")
    resubmissions: int = Field(description="The job's re-submissions so far, this one included.")


def _job(b: Backends, job_id: str, tenant: str | None = None) -> Job:
    """The job; a tenant-scoped caller (tenant given) finds only its own tenant's jobs."""
    job = b.jobs.get(job_id) if re.fullmatch(r"[A-Za-z0-9_\-]{1,100}", job_id) else None
    if job is None or (tenant is not None and job.tenant != tenant):
        raise jobs.JobNotFound(f"no job {job_id}")
    return job


def resubmit_job(b: Backends, job_id: str, *, tenant: str | None = None) -> ResubmitResult:
    """Send the job's next step again with a new message id (e.g. after a dead-letter, or a lost message)."""
    job = _job(b, job_id, tenant)
    if job.finished:
        raise JobNotResubmittable(f"job {job.id} already {job.status}; re-run it as a new job instead")
    committed = b.checkpoints.steps(job.id)
    step = (max(committed) if committed else 0) + 1
    token = secrets.token_hex(4)
    history, entry = ResubmissionStore(b.objects).decide(
        job.id,
        f"operator:{token}",
        lambda _: Resubmission(
            key="",
            step=step,
            action="resubmitted",
            message_id=f"{job.id}:{step}:o{token}",
            cause="operator",
            detail="re-submitted by an operator",
        ),
    )
    again = StepMessage(job_id=job.id, step=step, origin=str(entry.message_id))
    b.queue.send(again.model_dump_json().encode(), message_id=again.message_id, continuation=step > 1)
    b.jobs.update(job.id, lambda j: lifecycle.note_resubmissions(j, history.resubmitted))
    log.warning(
        "job %s: step %s re-submitted by an operator as %s",
        job.id,
        step,
        entry.message_id,
        extra={"event": "job_resubmitted", "job_id": job.id, "step": step, "tenant": job.tenant},
    )
    return ResubmitResult(job_id=job.id, step=step, message_id=str(entry.message_id), resubmissions=history.resubmitted)


def rerun_job(b: Backends, job_id: str, *, tenant: str | None = None) -> Job:
    """A new job with the finished job's tenant, task, session and policy."""
    job = _job(b, job_id, tenant)
    if not job.finished:
        raise JobNotRerunnable(f"job {job.id} is still {job.status}; cancel it or wait for it to finish first")
    request = jobs.JobRequest(
        task=job.task, session_id=job.session_id, policy=PolicyOverrides(**job.policy.model_dump())
    )
    new, _ = jobs.submit(b, job.tenant, request)
    log.info(
        "job %s re-run as %s", job.id, new.id, extra={"event": "job_rerun", "job_id": new.id, "tenant": job.tenant}
    )
    return new


def list_jobs(
    b: Backends,
    *,
    status: JobStatus | None = None,
    tenant: str | None = None,
    reason: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> JobPage:
    """Jobs of every tenant (or one), newest first; optionally only those that ended with an error reason."""

    def wanted(job: Job) -> bool:
        return (status is None or job.status == status) and (
            reason is None or (job.error is not None and job.error.reason == reason)
        )

    if tenant is not None:
        return jobs.page_of(((m, j) for m, j in b.jobs.list_for_tenant(tenant, after=cursor) if wanted(j)), limit)
    every = sorted((j for j in b.jobs.all() if wanted(j)), key=lambda j: (j.created_at, j.id), reverse=True)
    if cursor is not None:
        ids = [j.id for j in every]
        every = every[ids.index(cursor) + 1 :] if cursor in ids else []
    return jobs.page_of(((j.id, j) for j in every), limit)


# --- token usage ------------------------------------------------------------------------------------


class TenantUsage(BaseModel):
    tenant: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    budget: int
    percent_used: float
    warning: bool = Field(description="Over BUDGET_WARNING_RATIO (80%) of the budget: the runbook's token alert.")
    jobs: int
    cost: float | None = Field(None, description="Price x tokens at the deployed model's MODEL_PRICES; None unpriced.")
    cost_budget: float | None = Field(None, description="The tenant's monthly budget in money, if one is set.")
    cost_percent_used: float | None = None


class JobUsage(BaseModel):
    job_id: str
    tenant: str
    total_tokens: int
    cost: float | None = None


class UsageReport(BaseModel):
    month: str
    total_tokens: int
    tenants: list[TenantUsage] = Field(description="Most tokens first.")
    top_jobs: list[JobUsage] = Field(
        default_factory=list,
        description="The month's largest jobs by tokens: the runbook's first step on a token alert.",
    )
    total_cost: float | None = Field(None, description="Every tenant's cost; None when the model has no price.")
    currency: str | None = None
    priced_model: str | None = Field(None, description="The model whose prices were applied.")


def known_tenants(b: Backends, month: str) -> set[str]:
    """Tenants with a ledger in the month, an API key or a budget of their own (ledger keys only, no reads)."""
    prefix = f"{layout.LEDGERS.name}/{month}/"
    known = {key[len(prefix) : -len(".json")] for key in b.objects.list(prefix)}
    return known | {k.tenant for k in b.settings.api_keys.values()} | set(b.settings.tenant_token_budgets)


def tenant_usage(b: Backends, tenant: str, by_job: dict[str, Usage]) -> TenantUsage:
    """One tenant's row of the usage report, from its ledger's jobs."""
    spent = Usage(
        prompt_tokens=sum(u.prompt_tokens for u in by_job.values()),
        completion_tokens=sum(u.completion_tokens for u in by_job.values()),
        cached_tokens=sum(u.cached_tokens for u in by_job.values()),
    )
    budget = b.settings.budget_for(tenant)
    total = spent.total_tokens
    cost = _amount(b, spent)
    cost_budget = b.settings.cost_budget_for(tenant)
    return TenantUsage(
        tenant=tenant,
        prompt_tokens=spent.prompt_tokens,
        completion_tokens=spent.completion_tokens,
        total_tokens=total,
        budget=budget,
        percent_used=round(100.0 * total / budget, 2) if budget else 0.0,
        warning=bool(budget) and total > BUDGET_WARNING_RATIO * budget,
        jobs=len(by_job),
        cost=cost,
        cost_budget=cost_budget,
        cost_percent_used=round(100.0 * cost / cost_budget, 2) if cost is not None and cost_budget else None,
    )


def usage(b: Backends, month: str | None = None, *, top: int = 5, tenant: str | None = None) -> UsageReport:
    """Each tenant's tokens in the month (this month by default) against its budget; the `top` largest jobs.

    With `tenant`, that tenant's row and jobs only (what a tenant's operator may see)."""
    month = month or month_of()
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
        raise InvalidRequest(f"month {month!r} is not YYYY-MM")
    rows = []
    largest: list[tuple[int, str, str, Usage]] = []  # plain tuples: a month can hold many thousands of jobs
    for name in [tenant] if tenant is not None else known_tenants(b, month):
        by_job = b.ledger.by_job(name, month)
        if top:
            largest += [(-u.total_tokens, job_id, name, u) for job_id, u in by_job.items()]
        rows.append(tenant_usage(b, name, by_job))
    rows.sort(key=lambda r: (-r.total_tokens, r.tenant))
    top_jobs = [
        JobUsage(job_id=job_id, tenant=owner, total_tokens=-n, cost=_amount(b, u))
        for n, job_id, owner, u in heapq.nsmallest(top, largest, key=lambda row: row[:3])
    ]
    priced = price_usage(b, Usage())
    return UsageReport(
        month=month,
        total_tokens=sum(r.total_tokens for r in rows),
        tenants=rows,
        top_jobs=top_jobs,
        total_cost=round(sum(r.cost or 0.0 for r in rows), 6) if priced else None,
        currency=priced.currency if priced else None,
        priced_model=priced.model if priced else None,
    )


def _amount(b: Backends, usage: Usage) -> float | None:
    cost = price_usage(b, usage)
    return cost.amount if cost else None
