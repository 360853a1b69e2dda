"""The weekly operations checks: one report with the figures the runbook's alerts are about.

Definitions (so a figure means one thing in the report, the logs and the tests):
- the period is the 7 days before `now`; a job counts in it when it finished in it;
- error rate = failed / finished (succeeded + failed + cancelled) in the period;
- duration = finished_at - created_at (what the caller waited, queueing included); p50/p95
  are nearest-rank percentiles, so each is a duration some job really had;
- queue length = active messages (scheduled retries are waiting by design);
- tokens are month-to-date from the usage ledgers, against each tenant's MONTHLY_TOKEN_BUDGET
  (or its TENANT_TOKEN_BUDGETS entry);
- a stale job is unfinished with no committed step for STALE_JOB_MINUTES (since submission
  when it has none yet).
Each runbook threshold crossed (error rate > 5%, queue > 100, tokens > 80% of budget) is a
warning log event; the report goes to ops/reports/ as Markdown and JSON.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta

from pydantic import BaseModel, Field

from shared.contracts import Job, Usage, utcnow
from shared.engine.backends import Backends
from shared.engine.ledger import BUDGET_WARNING_RATIO, month_of
from shared.engine.pricing import price_usage
from shared.maintenance.backup import list_backups
from shared.maintenance.lease import exclusive

log = logging.getLogger("agent.maintenance")

LEASE = "weekly-checks"
PERIOD = timedelta(days=7)
ERROR_RATE_THRESHOLD = 0.05
QUEUE_LENGTH_THRESHOLD = 100
TOP = 10


class Alert(BaseModel):
    event: str = Field(description="The log event: error_rate_high, queue_backlog or token_budget_high.")
    message: str
    value: float
    threshold: float
    tenant: str | None = None


class JobFigures(BaseModel):
    finished: int
    succeeded: int
    failed: int
    cancelled: int
    error_rate: float = Field(description="failed / finished in the period (0 when none finished).")
    p50_seconds: float | None = Field(None, description="Nearest-rank median of finished jobs' durations.")
    p95_seconds: float | None = None
    failure_reasons: dict[str, int] = Field(default_factory=dict)


class QueueFigures(BaseModel):
    active: int
    scheduled: int
    dead_lettered: int


class TenantTokens(BaseModel):
    tenant: str
    total_tokens: int
    budget: int
    percent_used: float
    jobs: int
    cost: float | None = Field(None, description="Price x tokens (MODEL_PRICES); None when the model has no price.")


class JobTokens(BaseModel):
    job_id: str
    tenant: str
    total_tokens: int
    cost: float | None = None


class StaleJob(BaseModel):
    job_id: str
    tenant: str
    status: str
    step: int
    idle_minutes: float
    last_progress_at: datetime


class OpsReport(BaseModel):
    generated_at: datetime
    period_start: datetime
    period_end: datetime
    month: str
    jobs: JobFigures
    queue: QueueFigures
    tokens_used: int = Field(description="Month-to-date tokens of every tenant.")
    top_tenants: list[TenantTokens] = Field(description="Top token consumers by tenant, month to date.")
    top_jobs: list[JobTokens] = Field(description="The jobs that used the most tokens this month.")
    cost: float | None = Field(None, description="Month-to-date cost of every tenant, if the model has a price.")
    currency: str | None = None
    stale_jobs: list[StaleJob]
    latest_backup: str | None = None
    alerts: list[Alert]
    markdown_key: str = ""
    json_key: str = ""

    def counts(self) -> dict[str, int]:
        return {
            "finished": self.jobs.finished,
            "failed": self.jobs.failed,
            "stale": len(self.stale_jobs),
            "alerts": len(self.alerts),
            "queue": self.queue.active,
            "dead_lettered": self.queue.dead_lettered,
        }


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least q of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def _job_figures(finished: list[Job]) -> JobFigures:
    by_status = {s: sum(j.status == s for j in finished) for s in ("succeeded", "failed", "cancelled")}
    durations = [(j.finished_at - j.created_at).total_seconds() for j in finished if j.finished_at]
    reasons: dict[str, int] = {}
    for j in finished:
        if j.status == "failed":
            reason = j.error.reason if j.error else "unknown"
            reasons[reason] = reasons.get(reason, 0) + 1
    return JobFigures(
        finished=len(finished),
        **by_status,
        error_rate=by_status["failed"] / len(finished) if finished else 0.0,
        p50_seconds=percentile(durations, 0.5),
        p95_seconds=percentile(durations, 0.95),
        failure_reasons=dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
    )


def _last_progress(job: Job) -> datetime:
    return job.progress[-1].at if job.progress else job.created_at


def _waiting_on_children(b: Backends, job: Job) -> bool:
    """A parked deep job is not stale while a sub-question job is unfinished (those are checked themselves)."""
    return any((child := b.jobs.get(c)) is not None and not child.finished for c in job.children)


def _tokens(b: Backends, month: str) -> tuple[int, list[TenantTokens], list[JobTokens]]:
    tenants, jobs = [], []
    for tenant in b.ledger.tenants(month):
        by_job = b.ledger.by_job(tenant, month)
        used = sum(u.total_tokens for u in by_job.values())
        budget = b.settings.budget_for(tenant)
        costs = {j: c.amount if (c := price_usage(b, u)) else None for j, u in by_job.items()}
        priced = [c for c in costs.values() if c is not None]
        tenants.append(
            TenantTokens(
                tenant=tenant,
                total_tokens=used,
                budget=budget,
                jobs=len(by_job),
                percent_used=round(100.0 * used / budget, 2) if budget else 0.0,
                cost=round(sum(priced), 6) if priced else None,
            )
        )
        jobs += [
            JobTokens(job_id=j, tenant=tenant, total_tokens=u.total_tokens, cost=costs[j]) for j, u in by_job.items()
        ]
    tenants.sort(key=lambda t: (-t.total_tokens, t.tenant))
    jobs.sort(key=lambda j: (-j.total_tokens, j.job_id))
    return sum(t.total_tokens for t in tenants), tenants, jobs[:TOP]


def _alerts(jobs: JobFigures, queue: QueueFigures, tenants: list[TenantTokens]) -> list[Alert]:
    alerts = []
    if jobs.error_rate > ERROR_RATE_THRESHOLD:
        alerts.append(
            Alert(
                event="error_rate_high",
                value=jobs.error_rate,
                threshold=ERROR_RATE_THRESHOLD,
                message=f"error rate {jobs.error_rate:.1%} is over {ERROR_RATE_THRESHOLD:.0%} "
                f"({jobs.failed} of {jobs.finished} finished jobs failed)",
            )
        )
    if queue.active > QUEUE_LENGTH_THRESHOLD:
        alerts.append(
            Alert(
                event="queue_backlog",
                value=queue.active,
                threshold=QUEUE_LENGTH_THRESHOLD,
                message=f"{queue.active} active messages in the step queue (over {QUEUE_LENGTH_THRESHOLD})",
            )
        )
    for t in tenants:
        if t.budget and t.total_tokens > BUDGET_WARNING_RATIO * t.budget:
            alerts.append(
                Alert(
                    event="token_budget_high",
                    tenant=t.tenant,
                    value=t.total_tokens / t.budget,
                    threshold=BUDGET_WARNING_RATIO,
                    message=f"tenant {t.tenant} used {t.percent_used:.1f}% of its monthly budget "
                    f"({t.total_tokens} of {t.budget} tokens)",
                )
            )
    return alerts


def build_report(b: Backends, now: datetime) -> OpsReport:
    """The figures, without writing or logging anything."""
    start = now - PERIOD
    stale_after = timedelta(minutes=b.settings.stale_job_minutes)
    finished, stale = [], []
    for job in b.jobs.all():
        if job.finished:
            if job.finished_at is not None and start <= job.finished_at <= now:
                finished.append(job)
        elif (
            job.status != "waiting_for_approval"
            and now - _last_progress(job) > stale_after
            and not _waiting_on_children(b, job)
        ):
            # A job parked for approval is idle by design (its deadline ends it), and a deep job waits
            # for its sub-question jobs: neither is stale.
            idle = (now - _last_progress(job)).total_seconds() / 60
            stale.append(
                StaleJob(
                    job_id=job.id,
                    tenant=job.tenant,
                    status=job.status,
                    step=job.step,
                    idle_minutes=round(idle, 1),
                    last_progress_at=_last_progress(job),
                )
            )
    stale.sort(key=lambda s: -s.idle_minutes)
    counts = b.queue.counts()
    queue = QueueFigures(active=counts.active, scheduled=counts.scheduled, dead_lettered=counts.dead_lettered)
    month = month_of(now)
    used, tenants, top_jobs = _tokens(b, month)
    price = price_usage(b, Usage())  # None when the deployed model has no price
    figures = _job_figures(finished)
    backups = list_backups(b)
    return OpsReport(
        generated_at=now,
        period_start=start,
        period_end=now,
        month=month,
        jobs=figures,
        queue=queue,
        tokens_used=used,
        cost=round(sum(t.cost for t in tenants if t.cost is not None), 6) if price else None,
        currency=price.currency if price else None,
        top_tenants=tenants[:TOP],
        top_jobs=top_jobs,
        stale_jobs=stale,
        latest_backup=backups[0].id if backups else None,
        alerts=_alerts(figures, queue, tenants),
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _money(amount: float | None, currency: str | None, template: str = "{}") -> str:
    """A cost as text ("0.1234 USD") in template; "" (or "-" in a table cell) when there is no price."""
    if amount is None:
        return "-" if template == "{}" else ""
    return template.format(f"{amount:.4f} {currency or ''}".strip())


def render_markdown(r: OpsReport) -> str:
    j, q = r.jobs, r.queue
    lines = [
        f"# Weekly operations report, {r.period_start:%Y-%m-%d} to {r.period_end:%Y-%m-%d}",
        "",
        f"Generated {r.generated_at.isoformat(timespec='seconds')}.",
        "",
        "## Alerts",
        "",
        *([f"- **{a.event}**: {a.message}" for a in r.alerts] or ["- none: every runbook threshold is met"]),
        "",
        "## Jobs finished in the period",
        "",
        "| finished | succeeded | failed | cancelled | error rate | p50 | p95 |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {j.finished} | {j.succeeded} | {j.failed} | {j.cancelled} | {j.error_rate:.1%} | "
        f"{_seconds(j.p50_seconds)} | {_seconds(j.p95_seconds)} |",
        "",
        *[f"- failed with `{reason}`: {n}" for reason, n in j.failure_reasons.items()],
        "",
        "## Queue",
        "",
        f"- active: {q.active}",
        f"- scheduled: {q.scheduled}",
        f"- dead-lettered: {q.dead_lettered}",
        "",
        f"## Tokens, {r.month} to date: {r.tokens_used}" + _money(r.cost, r.currency, " ({})"),
        "",
        "| tenant | tokens | cost | budget | used | jobs |",
        "|---|---:|---:|---:|---:|---:|",
        *[
            f"| {t.tenant} | {t.total_tokens} | {_money(t.cost, r.currency)} | {t.budget} | {t.percent_used:.1f}% | "
            f"{t.jobs} |"
            for t in r.top_tenants
        ],
        "",
        "Top jobs by tokens:",
        "",
        *[f"- `{t.job_id}` ({t.tenant}): {t.total_tokens}{_money(t.cost, r.currency, ', {}')}" for t in r.top_jobs],
        "",
        f"## Stale jobs: {len(r.stale_jobs)}",
        "",
        *[
            f"- `{s.job_id}` ({s.tenant}, {s.status}, step {s.step}): no progress for {s.idle_minutes:.0f} min"
            for s in r.stale_jobs
        ],
        "",
        f"## Backups: latest {r.latest_backup or 'none'}",
        "",
    ]
    return "\n".join(lines)


def run_weekly_checks(b: Backends, now: datetime | None = None) -> OpsReport:
    """Build the report, write it to ops/reports/ (Markdown and JSON), and log it and each alert."""
    now = now or utcnow()
    with exclusive(b.objects, LEASE):
        report = build_report(b, now)
        stem = f"ops/reports/weekly-{now:%Y%m%dT%H%M%SZ}"
        report.markdown_key, report.json_key = f"{stem}.md", f"{stem}.json"
        b.objects.put(report.markdown_key, render_markdown(report).encode())
        b.objects.put(report.json_key, report.model_dump_json(indent=2).encode())
    for alert in report.alerts:
        extra = {"event": alert.event, **({"tenant": alert.tenant} if alert.tenant else {})}
        log.warning("%s", alert.message, extra=extra)
    log.info(
        "weekly checks: %s finished jobs, error rate %.1f%%, p50 %s, p95 %s, queue %s, dead-lettered %s, "
        "%s tokens this month, %s stale job(s), %s alert(s); report at %s",
        report.jobs.finished,
        100 * report.jobs.error_rate,
        _seconds(report.jobs.p50_seconds),
        _seconds(report.jobs.p95_seconds),
        report.queue.active,
        report.queue.dead_lettered,
        report.tokens_used,
        len(report.stale_jobs),
        len(report.alerts),
        report.markdown_key,
        extra={"event": "weekly_checks", "count": report.jobs.finished},
    )
    return report
