"""The storage layout: every container the app writes, what it holds, whether backups keep it, and how long.

Keys are "container/path" (the first segment is the Blob Storage container). Backup, restore
and retention read `CONTAINERS`, and a test fails when the app writes a container that is not
declared here, so a new kind of record can never be silently left out of backups. Each container
states its retention rule too (the setting that bounds it, or why it is bounded without one),
so storage cannot grow forever by omission; shared/maintenance/retention.py applies the rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["CONTAINERS", "BACKED_UP", "Container", "container_of", "retention_settings"]


@dataclass(frozen=True)
class Container:
    name: str
    holds: str
    backed_up: bool
    # How it stays bounded: the settings (UPPER_CASE names) the retention timer applies, or why none is needed.
    retention: str
    why_not: str = ""  # for containers backups leave out: why that is safe


CHECKPOINTS = Container(
    "checkpoints",
    "checkpoints/{job_id}/{n:06d}.json: immutable step results, the commit point of a step",
    backed_up=False,
    retention="CHECKPOINT_RETENTION_DAYS after a job finished: all but the last snapshot; JOB_RETENTION_DAYS: the rest",
    why_not="large and short-lived; a finished job keeps its record and report, which are backed up",
)
JOBS = Container(
    "jobs",
    "jobs/{job_id}.json: the job record, a projection of its checkpoints",
    backed_up=True,
    retention="JOB_RETENTION_DAYS after the job finished (unfinished jobs are kept)",
)
TENANTS = Container(
    "tenants",
    "tenants/{tenant}/jobs/{newest-first key}: a tenant's job listing",
    backed_up=True,
    retention="JOB_RETENTION_DAYS: a marker goes with its job",
)
PROGRESS = Container(
    "progress",
    "progress/{job_id}/{page:04d}.json: a long job's earlier progress, 32 steps a page",
    backed_up=True,
    retention="JOB_RETENTION_DAYS: a job's pages go with its job",
)
REPORTS = Container(
    "reports",
    "reports/{job_id}.json: the delivered (or kept-for-inspection) report",
    backed_up=True,
    retention="JOB_RETENTION_DAYS: a report goes with its job",
)
LEDGERS = Container(
    "ledgers",
    "ledgers/{YYYY-MM}/{tenant}.json: a tenant's month total; ledgers/jobs/{YYYY-MM}/{tenant}/{job_id}.json: per job",
    backed_up=True,
    retention="JOB_RETENTION_DAYS after a month ended, and only if its total exists: that month's per-job records; "
    "month totals are kept (one small record per tenant and month)",
)
RESUBMISSIONS = Container(
    "resubmissions",
    "resubmissions/{job_id}.json: dead-letter decisions per job",
    backed_up=True,
    retention="JOB_RETENTION_DAYS: a job's log goes with its job",
)
IDEMPOTENCY = Container(
    "idempotency",
    "idempotency/{tenant}/{sha256(key)}.json: Idempotency-Key to job",
    backed_up=True,
    retention="IDEMPOTENCY_RETENTION_HOURS after it was written (the replay window)",
)
MEMORY = Container(
    "memory",
    "memory/{tenant}/{session_id}.json: a session's recent findings",
    backed_up=False,
    retention="MEMORY_TTL_SECONDS: a session whose every finding has expired is deleted",
    why_not="short-term by design (MEMORY_TTL_SECONDS); a restore starts sessions afresh",
)
WEBHOOKS = Container(
    "webhooks",
    "webhooks/{tenant}/{job_id}.{event}.json: webhook deliveries and their attempts",
    backed_up=True,
    retention="JOB_RETENTION_DAYS: a job's deliveries go with its job",
)
SCHEDULES = Container(
    "schedules",
    "schedules/{tenant}/{schedule_id}.json: recurring research jobs",
    backed_up=True,
    retention="kept while the tenant keeps them: one record per schedule, deleted through the API",
)
PROVENANCE = Container(
    "provenance",
    "provenance/{job_id}.json: what produced a finished job's report (model, prompt, documents, checks, costs)",
    backed_up=True,
    retention="JOB_RETENTION_DAYS: a job's provenance goes with its job",
)
DOCUMENTS = Container(
    "documents",
    "documents/{doc_id}.json: a knowledge document's current version, source and chunk count",
    backed_up=True,
    retention="kept while the document is in the index: one record per document, deleted with it",
)
INGESTIONS = Container(
    "ingestions",
    "ingestions/{id}.json and ingestions/{id}/batches/{n:06d}.json: ingestion jobs, their files and progress",
    backed_up=False,
    retention="OPS_RETENTION_DAYS after it was last written, once finished",
    why_not="transient work: a finished ingestion's result is the index and the document records, both backed up",
)
KEYS = Container(
    "keys",
    "keys/{key_id}.json: API keys issued by `agentctl keys create`, as sha256 hashes with tenant, role, expiry",
    backed_up=True,
    retention="kept: one small record per key issued; revoking marks it, so the record stays as the trail of "
    "who held access",
)
LOCKS = Container(
    "locks",
    "locks/{name}.json: leases of the maintenance tasks",
    backed_up=False,
    retention="kept: one record per maintenance task, a fixed set",
    why_not="only meaningful while their holder runs",
)
OPS = Container(
    "ops",
    "ops/runs/, ops/reports/, ops/health/: timer runs, weekly reports, health probes",
    backed_up=False,
    retention="OPS_RETENTION_DAYS after it was written",
    why_not="operational history, regenerated by the timers",
)
BACKUPS = Container(
    "backups",
    "backups/{id}/: the backups themselves",
    backed_up=False,
    retention="BACKUPS_TO_KEEP: the backup task deletes older ones",
    why_not="a backup does not contain backups",
)

CONTAINERS: tuple[Container, ...] = (
    CHECKPOINTS,
    JOBS,
    TENANTS,
    PROGRESS,
    REPORTS,
    LEDGERS,
    RESUBMISSIONS,
    IDEMPOTENCY,
    MEMORY,
    WEBHOOKS,
    SCHEDULES,
    PROVENANCE,
    DOCUMENTS,
    INGESTIONS,
    KEYS,
    LOCKS,
    OPS,
    BACKUPS,
)
BACKED_UP: tuple[str, ...] = tuple(c.name for c in CONTAINERS if c.backed_up)


def retention_settings(container: Container) -> list[str]:
    """The settings (by their app-setting names) a container's retention rule names."""
    return re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", container.retention)


def container_of(key: str) -> str:
    return key.split("/", 1)[0]


def checkpoint_key(job_id: str, step: int) -> str:
    return f"{CHECKPOINTS.name}/{job_id}/{step:06d}.json"


def job_key(job_id: str) -> str:
    return f"{JOBS.name}/{job_id}.json"


def tenant_jobs_prefix(tenant: str) -> str:
    return f"{TENANTS.name}/{tenant}/jobs/"


def progress_key(job_id: str, page: int) -> str:
    return f"{PROGRESS.name}/{job_id}/{page:04d}.json"


def report_key(job_id: str) -> str:
    return f"{REPORTS.name}/{job_id}.json"


def ledger_key(month: str, tenant: str) -> str:
    return f"{LEDGERS.name}/{month}/{tenant}.json"


def ledger_job_key(month: str, tenant: str, job_id: str) -> str:
    return f"{ledger_jobs_prefix(month, tenant)}{job_id}.json"


def ledger_jobs_prefix(month: str, tenant: str) -> str:
    return f"{LEDGERS.name}/jobs/{month}/{tenant}/"


def resubmissions_key(job_id: str) -> str:
    return f"{RESUBMISSIONS.name}/{job_id}.json"


def idempotency_key(tenant: str, digest: str) -> str:
    return f"{IDEMPOTENCY.name}/{tenant}/{digest}.json"


def memory_key(tenant: str, session_id: str) -> str:
    return f"{MEMORY.name}/{tenant}/{session_id}.json"


def lease_key(name: str) -> str:
    return f"{LOCKS.name}/{name}.json"


def backup_prefix(backup_id: str = "") -> str:
    return f"{BACKUPS.name}/{backup_id}/" if backup_id else f"{BACKUPS.name}/"


def webhook_key(tenant: str, delivery_id: str) -> str:
    return f"{WEBHOOKS.name}/{tenant}/{delivery_id}.json"


def webhook_prefix(tenant: str | None = None) -> str:
    return f"{WEBHOOKS.name}/{tenant}/" if tenant else f"{WEBHOOKS.name}/"


def schedule_key(tenant: str, schedule_id: str) -> str:
    return f"{SCHEDULES.name}/{tenant}/{schedule_id}.json"


def schedule_prefix(tenant: str | None = None) -> str:
    return f"{SCHEDULES.name}/{tenant}/" if tenant else f"{SCHEDULES.name}/"


def document_key(doc_id: str) -> str:
    return f"{DOCUMENTS.name}/{doc_id}.json"


def ingestion_key(ingestion_id: str) -> str:
    return f"{INGESTIONS.name}/{ingestion_id}.json"


def ingestion_batch_key(ingestion_id: str, batch: int) -> str:
    return f"{INGESTIONS.name}/{ingestion_id}/batches/{batch:06d}.json"


def provenance_key(job_id: str) -> str:
    return f"{PROVENANCE.name}/{job_id}.json"
