"""Retention: every container stays bounded; each rule is declared beside its container in shared/engine/layout.py.

What goes, and when (all ages from settings, all counted from `now`):
- checkpoints of jobs finished CHECKPOINT_RETENTION_DAYS ago, all before the last full snapshot:
  the record, the report and the last snapshot still tell the job's verdict and usage;
- finished jobs JOB_RETENTION_DAYS old, entirely: checkpoints, report, re-submission log, webhook
  deliveries, listing marker, and the record last (so a run cut short is finished by the next);
- per-job ledger records of a month that ended JOB_RETENTION_DAYS ago, only when that month's
  tenant total exists (budgets and usage reports read the total, which is kept);
- idempotency records older than IDEMPOTENCY_RETENTION_HOURS (their replay window);
- session memory whose every finding is older than MEMORY_TTL_SECONDS (recall ignores them anyway);
- operational records (timer runs, weekly reports, health probes) older than OPS_RETENTION_DAYS;
- finished ingestions (their record and batches) OPS_RETENTION_DAYS after they finished.
Unfinished jobs are never touched: their checkpoints are the state the next step reads. Every
deletion is of something that no longer changes, so a run is idempotent: a second run, or one
after a crash mid-way, deletes what is left. The run holds the retention lease (one at a time).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field

from shared.contracts import Job, utcnow
from shared.engine import layout
from shared.engine.backends import Backends
from shared.maintenance.lease import Lease, exclusive
from shared.ports import PreconditionFailed

log = logging.getLogger("agent.maintenance")

LEASE = "retention"


class RetentionResult(BaseModel):
    cutoff: datetime = Field(description="Jobs that finished before this lose all checkpoints but their last.")
    job_cutoff: datetime | None = Field(None, description="Jobs that finished before this are deleted entirely.")
    jobs_examined: int = 0
    jobs_pruned: int = Field(0, description="Finished jobs whose older checkpoints were deleted in this run.")
    checkpoints_deleted: int = 0
    jobs_deleted: int = Field(0, description="Finished jobs deleted with their report, marker, logs and deliveries.")
    reports_deleted: int = 0
    ledger_records_deleted: int = Field(0, description="Per-job ledger records of closed months with a kept total.")
    idempotency_records_deleted: int = 0
    sessions_deleted: int = Field(0, description="Session memories whose every finding had expired.")
    run_records_deleted: int = Field(0, description="Operational records (ops/) older than OPS_RETENTION_DAYS.")
    ingestions_deleted: int = Field(0, description="Finished ingestions older than OPS_RETENTION_DAYS.")
    duration_ms: float = 0.0

    def counts(self) -> dict[str, int]:
        return {
            "jobs_examined": self.jobs_examined,
            "jobs_pruned": self.jobs_pruned,
            "checkpoints_deleted": self.checkpoints_deleted,
            "jobs_deleted": self.jobs_deleted,
            "reports_deleted": self.reports_deleted,
            "ledger_records_deleted": self.ledger_records_deleted,
            "idempotency_records_deleted": self.idempotency_records_deleted,
            "sessions_deleted": self.sessions_deleted,
            "run_records_deleted": self.run_records_deleted,
            "ingestions_deleted": self.ingestions_deleted,
        }


def apply_retention(b: Backends, now: datetime | None = None) -> RetentionResult:
    """Apply every container's retention rule (under the retention lease); see the module docstring."""
    started = time.perf_counter()
    now = now or utcnow()
    s = b.settings
    result = RetentionResult(
        cutoff=now - timedelta(days=s.checkpoint_retention_days),
        job_cutoff=now - timedelta(days=s.job_retention_days),
    )
    with exclusive(b.objects, LEASE) as lease:
        _jobs(b, result, lease)
        _ledger_records(b, result, now, lease)
        _idempotency_records(b, result, now - timedelta(hours=s.idempotency_retention_hours), lease)
        _sessions(b, result, now.timestamp() - s.memory_ttl_seconds, lease)
        _ops_records(b, result, now - timedelta(days=s.ops_retention_days))
        _ingestions(b, result, now - timedelta(days=s.ops_retention_days), lease)
    result.duration_ms = round((time.perf_counter() - started) * 1000, 3)
    log.info(
        "retention: %s job(s) deleted and %s checkpoint(s) of %s job(s) pruned (%s examined); deleted %s ledger, "
        "%s idempotency, %s session and %s operational record(s)",
        result.jobs_deleted,
        result.checkpoints_deleted,
        result.jobs_pruned,
        result.jobs_examined,
        result.ledger_records_deleted,
        result.idempotency_records_deleted,
        result.sessions_deleted,
        result.run_records_deleted,
        extra={"event": "retention_done", "count": result.checkpoints_deleted + result.jobs_deleted},
    )
    return result


def _jobs(b: Backends, result: RetentionResult, lease: Lease) -> None:
    assert result.job_cutoff is not None
    for job in b.jobs.all():
        result.jobs_examined += 1
        if not job.finished or job.finished_at is None:
            continue  # unfinished jobs are never touched
        if job.finished_at < result.job_cutoff:
            _delete_job(b, job, result)
        elif job.finished_at < result.cutoff:
            steps = b.checkpoints.prunable(job.id)  # all before the last full snapshot
            if not steps:
                continue
            for n in steps:
                if b.checkpoints.delete(job.id, n):
                    result.checkpoints_deleted += 1
            result.jobs_pruned += 1
        lease.keep_alive()


def _delete_job(b: Backends, job: Job, result: RetentionResult) -> None:
    """Everything that hangs off the job first, its record last: a crash mid-way leaves it findable."""
    for n in b.checkpoints.steps(job.id):
        if b.checkpoints.delete(job.id, n):
            result.checkpoints_deleted += 1
    if b.objects.delete(layout.report_key(job.id)):
        result.reports_deleted += 1
    b.objects.delete(layout.resubmissions_key(job.id))
    b.objects.delete(layout.provenance_key(job.id))
    for key in list(b.objects.list(f"{layout.webhook_prefix(job.tenant)}{job.id}.")):
        b.objects.delete(key)
    b.jobs.delete_pages(job.id)
    b.objects.delete(b.jobs.marker_key(job))
    if b.jobs.delete(job.id):
        result.jobs_deleted += 1


def _month_end(month: str) -> datetime:
    year, number = (int(part) for part in month.split("-"))
    return datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)


def _ledger_records(b: Backends, result: RetentionResult, now: datetime, lease: Lease) -> None:
    """Per-job records of months that ended a job-retention age ago, when the month's total is there."""
    assert result.job_cutoff is not None
    root = f"{layout.LEDGERS.name}/jobs/"
    totals: dict[tuple[str, str], bool] = {}
    for key in list(b.objects.list(root)):
        parts = key[len(root) :].split("/")
        if len(parts) != 3:
            continue
        month, tenant, _ = parts
        try:
            closed = _month_end(month) <= result.job_cutoff
        except ValueError:
            continue  # not a month: not ours to judge
        if not closed:
            continue
        if (month, tenant) not in totals:
            totals[(month, tenant)] = b.objects.get(layout.ledger_key(month, tenant)) is not None
        if totals[(month, tenant)] and b.objects.delete(key):
            result.ledger_records_deleted += 1
            if result.ledger_records_deleted % 1000 == 0:
                lease.keep_alive()


def _written_at(data: bytes, fallback: datetime | None) -> float | None:
    try:
        at = json.loads(data).get("at")
    except (ValueError, AttributeError):
        at = None
    if isinstance(at, int | float):
        return float(at)
    return fallback.timestamp() if fallback is not None else None


def _idempotency_records(b: Backends, result: RetentionResult, cutoff: datetime, lease: Lease) -> None:
    for key in list(b.objects.list(f"{layout.IDEMPOTENCY.name}/")):
        found = b.objects.get(key)
        if found is None:
            continue
        at = _written_at(found.data, found.last_modified)
        if at is not None and at < cutoff.timestamp() and _delete_unchanged(b, key, found.etag):
            result.idempotency_records_deleted += 1
            if result.idempotency_records_deleted % 1000 == 0:
                lease.keep_alive()


def _sessions(b: Backends, result: RetentionResult, horizon: float, lease: Lease) -> None:
    for key in list(b.objects.list(f"{layout.MEMORY.name}/")):
        found = b.objects.get(key)
        if found is None:
            continue
        try:
            items = json.loads(found.data).get("items", [])
            newest = max((float(i["at"]) for i in items), default=0.0)
        except (ValueError, AttributeError, KeyError, TypeError):
            continue  # unreadable: left for an operator rather than guessed at
        # If-Match: a finding remembered since the read keeps the session.
        if newest <= horizon and _delete_unchanged(b, key, found.etag):
            result.sessions_deleted += 1
            if result.sessions_deleted % 1000 == 0:
                lease.keep_alive()


def _delete_unchanged(b: Backends, key: str, etag: str) -> bool:
    try:
        return b.objects.delete(key, if_match=etag)
    except PreconditionFailed:
        return False


def _ingestions(b: Backends, result: RetentionResult, cutoff: datetime, lease: Lease) -> None:
    """Finished ingestions (succeeded or failed) past the age: batches first, the record last."""
    root = f"{layout.INGESTIONS.name}/"
    for key in list(b.objects.list(root)):
        if "/" in key[len(root) :]:
            continue  # a batch: it goes with its ingestion
        found = b.objects.get(key)
        if found is None:
            continue
        try:
            record = json.loads(found.data)
            finished = record.get("status") in ("succeeded", "failed") and record.get("finished_at")
            old = bool(finished) and datetime.fromisoformat(str(record["finished_at"])) < cutoff
        except (ValueError, AttributeError, TypeError):
            continue  # unreadable: left for an operator rather than guessed at
        if not old:
            continue  # queued or running: its batches are the work still to do
        ingestion_id = key[len(root) : -len(".json")]
        for batch in list(b.objects.list(f"{root}{ingestion_id}/")):
            b.objects.delete(batch)
        if _delete_unchanged(b, key, found.etag):
            result.ingestions_deleted += 1
            lease.keep_alive()


def _ops_keys(b: Backends) -> Iterator[tuple[str, str | None]]:
    """(key, UTC stamp in its name or None) of every operational record."""
    for key in list(b.objects.list(f"{layout.OPS.name}/")):
        name = key.rsplit("/", 1)[1]
        if key.startswith(f"{layout.OPS.name}/runs/"):
            yield key, name.split(".", 1)[0]  # {occurrence:%Y%m%dT%H%M%SZ}.json
        elif key.startswith(f"{layout.OPS.name}/reports/") and name.startswith("weekly-"):
            yield key, name.removeprefix("weekly-").split(".", 1)[0]
        else:
            yield key, None


def _ops_records(b: Backends, result: RetentionResult, cutoff: datetime) -> None:
    oldest_kept = f"{cutoff:%Y%m%dT%H%M%SZ}"
    for key, stamp in _ops_keys(b):
        if stamp is not None:
            old = stamp < oldest_kept  # names are UTC stamps: no read needed
        else:
            found = b.objects.get(key)
            old = found is not None and found.last_modified is not None and found.last_modified < cutoff
        if old and b.objects.delete(key):
            result.run_records_deleted += 1
