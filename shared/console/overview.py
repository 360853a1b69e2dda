"""The overview: dependency health, queue, jobs by status, error rate, tokens, latest backup and checks,
the stuck-job detector's latest run."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from shared.console import pages, stuck_jobs
from shared.console.access import BackendsDep
from shared.console.pages import SessionDep
from shared.engine.backends import Backends
from shared.engine.ledger import BUDGET_WARNING_RATIO, month_of
from shared.maintenance import backup
from shared.maintenance.checks import OpsReport
from shared.services import health, job_search, operations

router = APIRouter()
REFRESH_SECONDS = 10
RECENT = 10


def latest_weekly_report(b: Backends, tenant: str | None) -> OpsReport | None:
    """The newest weekly checks report; for a tenant operator, with other tenants' lines left out."""
    keys = sorted(k for k in b.objects.list("ops/reports/") if k.endswith(".json"))
    if not keys:
        return None
    found = b.objects.get(keys[-1])
    if found is None:
        return None
    report = OpsReport.model_validate(json.loads(found.data))
    if tenant is not None:
        report.top_tenants = [t for t in report.top_tenants if t.tenant == tenant]
        report.top_jobs = [j for j in report.top_jobs if j.tenant == tenant]
        report.alerts = [a for a in report.alerts if a.tenant in (None, tenant)]
    return report


def figures(b: Backends, tenant: str | None) -> dict[str, Any]:
    month = month_of()
    visible = [tenant] if tenant is not None else sorted(operations.known_tenants(b, month))
    tenants = [operations.tenant_usage(b, name, b.ledger.by_job(name, month)) for name in visible]
    backups = backup.list_backups(b)
    recent = job_search.find_jobs(b, tenant=tenant, limit=RECENT)
    return {
        "health": health.check(b),
        "queue": operations.queue_status(b),
        "windows": job_search.window_counts(b, tenant=tenant),
        "line": job_search.ERROR_RATE_LINE,
        "tokens": tenants,
        "warning_ratio": BUDGET_WARNING_RATIO,
        "month": month,
        "latest_backup": backups[0] if backups else None,
        "weekly": latest_weekly_report(b, tenant),
        "stuck_run": stuck_jobs.latest_run(b),
        "recent": recent.jobs,
        "refresh": REFRESH_SECONDS,
    }


@router.get("/")
def overview(request: Request, s: SessionDep, b: BackendsDep) -> Response:
    return pages.render(request, "overview.html", s, **figures(b, pages.tenant_scope(pages.caller_of(s))))


@router.get("/overview/live")
def overview_live(request: Request, s: SessionDep, b: BackendsDep) -> Response:
    return pages.render(request, "overview_live.html", s, **figures(b, pages.tenant_scope(pages.caller_of(s))))
