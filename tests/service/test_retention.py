"""Retention keeps every container bounded: old finished jobs go whole, records after their window,
sessions after their TTL, operational records by age; unfinished jobs and open months are kept."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from shared.contracts import Checkpoint, Job, Outcome, Policy, Report, Usage
from shared.engine import layout
from shared.engine.backends import Backends
from shared.engine.ledger import month_of
from shared.maintenance import retention
from shared.maintenance.lease import LeaseHeld, acquire

NOW = datetime(2031, 6, 15, 12, 0, tzinfo=UTC)


def _job(b: Backends, job_id: str, *, finished_days_ago: float | None, created_days_ago: float) -> Job:
    job = Job(
        id=job_id,
        tenant="acme",
        task="What does retention keep?",
        policy=Policy(),
        status="succeeded" if finished_days_ago is not None else "running",
        created_at=NOW - timedelta(days=created_days_ago),
        finished_at=None if finished_days_ago is None else NOW - timedelta(days=finished_days_ago),
    )
    b.jobs.create(job)
    for n in (1, 2, 3):
        outcome = Outcome(status="succeeded") if n == 3 and finished_days_ago is not None else None
        b.checkpoints.commit(
            Checkpoint(job_id=job_id, step=n, kind="model", summary=f"step {n}", state={}, outcome=outcome)
        )
    b.reports.save(job_id, Report(markdown=f"# {job_id}"))
    b.objects.put(layout.resubmissions_key(job_id), b"{}")
    b.objects.put(layout.provenance_key(job_id), b"{}")
    b.objects.put(layout.webhook_key("acme", f"{job_id}.job.succeeded"), b"{}")
    return job


def _keys(b: Backends, prefix: str) -> list[str]:
    return list(b.objects.list(prefix))


def test_a_retention_run_deletes_what_aged_out_and_keeps_the_rest(backends: Backends) -> None:
    b = backends
    old = _job(b, "job-old", finished_days_ago=120, created_days_ago=121)
    middle = _job(b, "job-middle", finished_days_ago=40, created_days_ago=41)
    fresh = _job(b, "job-fresh", finished_days_ago=1, created_days_ago=2)
    stuck = _job(b, "job-stuck", finished_days_ago=None, created_days_ago=400)  # unfinished: never touched

    # Ledger: a month closed long ago with its total, one closed without a total, and the open month.
    closed, open_month = month_of(NOW - timedelta(days=200)), month_of(NOW)
    b.ledger.record("acme", closed, old.id, Usage(prompt_tokens=10), 3)
    b.objects.put(layout.ledger_job_key("2020-01", "acme", "job-lost"), b"{}")  # no total: kept
    b.ledger.record("acme", open_month, fresh.id, Usage(prompt_tokens=5), 3)

    at = NOW.timestamp()
    stale, recent = layout.idempotency_key("acme", "a" * 64), layout.idempotency_key("acme", "b" * 64)
    b.objects.put(stale, json.dumps({"job_id": old.id, "at": at - 2 * 86400}).encode())
    b.objects.put(recent, json.dumps({"job_id": fresh.id, "at": at - 3600}).encode())
    b.objects.put(layout.memory_key("acme", "s-old"), json.dumps({"items": [{"text": "x", "at": at - 7200}]}).encode())
    b.objects.put(layout.memory_key("acme", "s-new"), json.dumps({"items": [{"text": "y", "at": at - 60}]}).encode())
    b.objects.put("ops/runs/backup/20310101T180000Z.json", b"{}")
    b.objects.put("ops/runs/backup/20310614T180000Z.json", b"{}")
    b.objects.put("ops/reports/weekly-20310101T000000Z.md", b"# old")

    result = retention.apply_retention(b, now=NOW)

    # The old job is gone whole: record, marker, report, checkpoints, re-submissions, webhook deliveries.
    assert b.jobs.get(old.id) is None and b.reports.get(old.id) is None
    assert b.checkpoints.steps(old.id) == []
    assert b.objects.get(layout.resubmissions_key(old.id)) is None
    assert b.objects.get(layout.provenance_key(old.id)) is None
    assert b.objects.get(layout.provenance_key(middle.id)) is not None
    assert _keys(b, f"{layout.webhook_prefix('acme')}{old.id}.") == []
    listed = [job_id for _, job_id, _ in b.jobs.markers("acme")]
    assert old.id not in listed and {middle.id, fresh.id, stuck.id} <= set(listed)
    # The middle one only lost its older checkpoints; the fresh and the unfinished ones are whole.
    assert b.jobs.get(middle.id) is not None and b.reports.get(middle.id) is not None
    assert b.checkpoints.steps(middle.id) == b.checkpoints.steps(middle.id)[-1:]
    assert b.checkpoints.steps(fresh.id) == [1, 2, 3]
    assert b.checkpoints.steps(stuck.id) == [1, 2, 3] and b.reports.get(stuck.id) is not None

    # Ledger: the closed month's per-job records go, its total stays; the rest is kept.
    assert _keys(b, layout.ledger_jobs_prefix(closed, "acme")) == []
    assert b.ledger.total("acme", closed).prompt_tokens == 10
    assert _keys(b, layout.ledger_jobs_prefix("2020-01", "acme")) != []
    assert _keys(b, layout.ledger_jobs_prefix(open_month, "acme")) != []

    assert _keys(b, "idempotency/") == [recent]
    assert _keys(b, "memory/") == [layout.memory_key("acme", "s-new")]
    assert _keys(b, "ops/runs/") == ["ops/runs/backup/20310614T180000Z.json"]
    assert _keys(b, "ops/reports/") == []

    assert (result.jobs_deleted, result.reports_deleted, result.ledger_records_deleted) == (1, 1, 1)
    assert (result.idempotency_records_deleted, result.sessions_deleted, result.run_records_deleted) == (1, 1, 2)

    # Idempotent: a second run finds nothing more to delete.
    again = retention.apply_retention(b, now=NOW)
    assert again.jobs_deleted == again.checkpoints_deleted == again.ledger_records_deleted == 0
    assert again.idempotency_records_deleted == again.sessions_deleted == again.run_records_deleted == 0


def test_finished_ingestions_go_after_their_age_and_running_ones_stay(backends: Backends) -> None:
    b = backends

    def ingestion(ingestion_id: str, status: str, finished_days_ago: float | None) -> None:
        finished = None if finished_days_ago is None else (NOW - timedelta(days=finished_days_ago)).isoformat()
        record = {"id": ingestion_id, "status": status, "finished_at": finished}
        b.objects.put(layout.ingestion_key(ingestion_id), json.dumps(record).encode())
        b.objects.put(layout.ingestion_batch_key(ingestion_id, 1), b"{}")

    ingestion("ing-old", "succeeded", 45)
    ingestion("ing-old-running", "running", None)  # however old: its batches are work still to do
    ingestion("ing-recent", "failed", 2)
    result = retention.apply_retention(b, now=NOW)
    assert result.ingestions_deleted == 1
    assert sorted(_keys(b, "ingestions/")) == sorted(
        [
            layout.ingestion_batch_key("ing-old-running", 1),
            layout.ingestion_key("ing-old-running"),
            layout.ingestion_batch_key("ing-recent", 1),
            layout.ingestion_key("ing-recent"),
        ]
    )


def test_a_run_cut_short_after_the_listing_marker_is_finished_by_the_next(backends: Backends) -> None:
    b = backends
    old = _job(b, "job-half", finished_days_ago=200, created_days_ago=201)
    for n in b.checkpoints.steps(old.id):  # what a crash mid-way leaves: the record, nothing else
        b.checkpoints.delete(old.id, n)
    b.objects.delete(layout.report_key(old.id))
    b.objects.delete(b.jobs.marker_key(old))
    assert retention.apply_retention(b, now=NOW).jobs_deleted == 1
    assert b.jobs.get(old.id) is None


def test_a_session_remembered_again_after_the_read_is_kept(backends: Backends) -> None:
    # If-Match on delete: a write between retention's read and its delete wins.
    b = backends
    key = layout.memory_key("acme", "s-1")
    b.objects.put(key, json.dumps({"items": [{"text": "x", "at": NOW.timestamp() - 7200}]}).encode())
    etag = b.objects.get(key).etag  # type: ignore[union-attr]
    b.objects.put(key, json.dumps({"items": [{"text": "y", "at": NOW.timestamp()}]}).encode())
    assert retention._delete_unchanged(b, key, etag) is False
    assert b.objects.get(key) is not None


def test_retention_runs_under_its_lease(backends: Backends) -> None:
    elsewhere = acquire(backends.objects, retention.LEASE, ttl=60)  # another instance's run
    old = _job(backends, "job-old", finished_days_ago=200, created_days_ago=201)
    with pytest.raises(LeaseHeld):
        retention.apply_retention(backends, now=NOW)
    assert backends.jobs.get(old.id) is not None
    elsewhere.release()
    assert retention.apply_retention(backends, now=NOW).jobs_deleted == 1
