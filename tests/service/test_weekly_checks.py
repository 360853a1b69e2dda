"""The weekly operations report against a seeded history whose figures are known exactly."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest

from shared.contracts import Job, JobError, Policy, StepSummary, Usage
from shared.engine.backends import Backends
from shared.maintenance import checks

NOW = datetime(2025, 3, 10, 0, 0, tzinfo=UTC)  # a Monday, when the weekly timer fires


@pytest.fixture
def history(app_env: dict[str, str], backends: Backends) -> Backends:
    """20 jobs finished in the week (1..20 minutes; 17 succeeded, 2 failed, 1 cancelled), one older failure,
    three unfinished jobs (two stale), month-to-date ledgers for three tenants, and 101 queued messages."""
    b = backends
    for minutes in range(1, 21):
        finished = NOW - timedelta(days=1, hours=minutes)
        status, error = "succeeded", None
        if minutes in (7, 13):
            status, error = "failed", JobError(reason="step_failed" if minutes == 7 else "policy_limit")
        elif minutes == 20:
            status = "cancelled"
        b.jobs.create(
            Job(
                id=f"job-done-{minutes:02d}",
                tenant="acme",
                task="t",
                policy=Policy(),
                status=status,
                error=error,
                created_at=finished - timedelta(minutes=minutes),
                finished_at=finished,
            )
        )
    b.jobs.create(
        Job(
            id="job-last-week",
            tenant="acme",
            task="t",
            policy=Policy(),
            status="failed",
            created_at=NOW - timedelta(days=9),
            finished_at=NOW - timedelta(days=8),
        )
    )

    def progressed(minutes_ago: float) -> list[StepSummary]:
        return [StepSummary(step=1, kind="model", summary="s", at=NOW - timedelta(minutes=minutes_ago))]

    b.jobs.create(
        Job(
            id="job-stuck",
            tenant="beta",
            task="t",
            policy=Policy(),
            status="running",
            step=1,
            created_at=NOW - timedelta(hours=2),
            progress=progressed(45),
        )
    )
    b.jobs.create(
        Job(
            id="job-busy",
            tenant="beta",
            task="t",
            policy=Policy(),
            status="running",
            step=1,
            created_at=NOW - timedelta(hours=2),
            progress=progressed(5),
        )
    )
    b.jobs.create(
        Job(id="job-never-started", tenant="gamma", task="t", policy=Policy(), created_at=NOW - timedelta(minutes=90))
    )

    b.ledger.record("acme", "2025-03", "job-done-01", Usage(prompt_tokens=2_500_000, completion_tokens=500_000), step=1)
    b.ledger.record("acme", "2025-03", "job-done-02", Usage(prompt_tokens=1_400_000, completion_tokens=100_000), step=1)
    b.ledger.record("beta", "2025-03", "job-stuck", Usage(prompt_tokens=150_000, completion_tokens=50_000), step=1)
    b.ledger.record("gamma", "2025-03", "job-never-started", Usage(prompt_tokens=1_000), step=1)
    b.ledger.record("acme", "2025-02", "job-last-week", Usage(prompt_tokens=9_999_999), step=1)  # another month
    for n in range(101):
        b.queue.send(b"{}", message_id=f"backlog-{n}")
    return b


def test_weekly_report_figures_match_the_seeded_history(history: Backends, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.maintenance")
    report = checks.run_weekly_checks(history, now=NOW)

    j = report.jobs
    assert (j.finished, j.succeeded, j.failed, j.cancelled) == (20, 17, 2, 1)
    assert j.error_rate == pytest.approx(0.10)
    assert (j.p50_seconds, j.p95_seconds) == (600.0, 1140.0)  # nearest rank: the 10th and 19th of 1..20 minutes
    assert j.failure_reasons == {"policy_limit": 1, "step_failed": 1}
    assert (report.queue.active, report.queue.dead_lettered) == (101, 0)
    assert report.tokens_used == 4_700_000 + 1_000
    assert [(t.tenant, t.total_tokens, t.percent_used) for t in report.top_tenants] == [
        ("acme", 4_500_000, 90.0),
        ("beta", 200_000, 4.0),
        ("gamma", 1_000, 0.02),
    ]
    assert [t.job_id for t in report.top_jobs[:2]] == ["job-done-01", "job-done-02"]
    assert [(s.job_id, s.idle_minutes) for s in report.stale_jobs] == [("job-never-started", 90.0), ("job-stuck", 45.0)]
    assert {a.event for a in report.alerts} == {"error_rate_high", "queue_backlog", "token_budget_high"}

    warnings = {getattr(r, "event", None): r for r in caplog.records if r.levelno == logging.WARNING}
    assert set(warnings) == {"error_rate_high", "queue_backlog", "token_budget_high"}
    assert "10.0%" in warnings["error_rate_high"].getMessage()
    assert getattr(warnings["token_budget_high"], "tenant", None) == "acme"

    assert report.markdown_key == "ops/reports/weekly-20250310T000000Z.md"
    markdown = history.objects.get(report.markdown_key).data.decode()
    assert "| 20 | 17 | 2 | 1 | 10.0% | 600.0 s | 1140.0 s |" in markdown and "job-stuck" in markdown
    stored = json.loads(history.objects.get(report.json_key).data)
    assert stored["jobs"]["p95_seconds"] == 1140.0 and stored["tokens_used"] == 4_701_000


def test_a_quiet_week_raises_no_alert(backends: Backends, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.maintenance")
    report = checks.run_weekly_checks(backends, now=NOW)
    assert report.alerts == [] and report.jobs.finished == 0 and report.jobs.p50_seconds is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(getattr(r, "event", None) == "weekly_checks" for r in caplog.records)


def test_percentiles_are_nearest_rank() -> None:
    assert checks.percentile([], 0.5) is None
    assert checks.percentile([5.0], 0.95) == 5.0
    assert checks.percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.0
    assert checks.percentile([float(n) for n in range(1, 101)], 0.95) == 95.0
