"""Usage: tokens per day and per tenant this month as charts, the largest jobs, the budget lines.

Days are the jobs' submission days, read from the time-ordered job ids of the month's ledgers, so
the page reads the ledgers only, never the job records.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from shared.api.deps import BackendsDep
from shared.console import pages
from shared.console.pages import SessionDep
from shared.engine.backends import Backends
from shared.engine.ledger import BUDGET_WARNING_RATIO
from shared.services import operations

router = APIRouter()
TOP = 10


def submitted_day(job_id: str) -> str | None:
    """The UTC day a job was submitted, from its id (`job-{ms hex}-{random}`)."""
    parts = job_id.split("-")
    if len(parts) < 3:
        return None
    try:
        return datetime.fromtimestamp(int(parts[1], 16) / 1000, UTC).strftime("%Y-%m-%d")
    except (ValueError, OverflowError, OSError):
        return None


def usage_figures(b: Backends, tenant: str | None, month: str | None) -> dict[str, Any]:
    report = operations.usage(b, month, top=0)
    tenants = [t for t in report.tenants if tenant is None or t.tenant == tenant]
    per_day: dict[str, int] = defaultdict(int)
    largest: list[tuple[int, str, str]] = []
    for t in tenants:
        for job_id, u in b.ledger.by_job(t.tenant, report.month).items():
            day = submitted_day(job_id)
            if day:
                per_day[day] += u.total_tokens
            largest.append((u.total_tokens, job_id, t.tenant))
    largest.sort(key=lambda row: (-row[0], row[1]))
    days = sorted(per_day)
    chart = {
        "days": [int(datetime.strptime(d, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()) for d in days],
        "day_tokens": [per_day[d] for d in days],
        "tenants": [t.tenant for t in tenants],
        "tenant_tokens": [t.total_tokens for t in tenants],
        "tenant_budgets": [t.budget for t in tenants],
        "tenant_warnings": [round(t.budget * BUDGET_WARNING_RATIO) for t in tenants],
    }
    return {
        "month": report.month,
        "tenants": tenants,
        "per_day": [(d, per_day[d]) for d in days],
        "largest": largest[:TOP],
        "chart": chart,
        "warning_ratio": BUDGET_WARNING_RATIO,
    }


@router.get("/usage")
def usage_page(
    request: Request,
    s: SessionDep,
    b: BackendsDep,
    month: Annotated[str | None, Query(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")] = None,
) -> Response:
    return pages.render(
        request, "usage.html", s, **usage_figures(b, pages.tenant_scope(pages.caller_of(s)), month)
    )
