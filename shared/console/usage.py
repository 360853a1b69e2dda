"""Usage: tokens per day and per tenant this month as charts, the largest jobs, the budget lines.

Money stands next to tokens wherever the deployed model has a price (MODEL_PRICES): per tenant
against its cost budget (TENANT_COST_BUDGETS / MONTHLY_COST_BUDGET), per job, and in total.

Days are the jobs' submission days, read from the time-ordered job ids of the month's ledgers, so
the page reads the ledgers only, never the job records.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from shared.console import pages
from shared.console.access import BackendsDep
from shared.console.pages import SessionDep
from shared.engine.backends import Backends
from shared.engine.ledger import BUDGET_WARNING_RATIO, month_of
from shared.engine.pricing import price_usage
from shared.services import operations

router = APIRouter()
TOP = 10


def submitted_day(job_id: str) -> int | None:
    """The UTC day (days since 1970) a job was submitted, from its id (`job-{ms hex}-{random}`)."""
    parts = job_id.split("-")
    if len(parts) < 3:
        return None
    try:
        return int(parts[1], 16) // 86_400_000
    except ValueError:
        return None


def usage_figures(b: Backends, tenant: str | None, month: str | None) -> dict[str, Any]:
    """Rows per tenant (the usage report's), tokens per submission day, the largest jobs: one ledger read each."""
    month = month or month_of()
    visible = [tenant] if tenant is not None else sorted(operations.known_tenants(b, month))
    rows: list[operations.TenantUsage] = []
    per_day: dict[int, int] = defaultdict(int)
    largest: list[tuple[int, str, str]] = []
    costs: dict[str, float | None] = {}
    for name in visible:
        by_job = b.ledger.by_job(name, month)
        rows.append(operations.tenant_usage(b, name, by_job))
        for job_id, u in by_job.items():
            day = submitted_day(job_id)
            if day is not None:
                per_day[day] += u.total_tokens
            largest.append((-u.total_tokens, job_id, name))
            priced = price_usage(b, u)
            costs[job_id] = priced.amount if priced else None
    rows.sort(key=lambda r: (-r.total_tokens, r.tenant))
    days = sorted(per_day)
    chart = {
        "days": [d * 86_400 for d in days],
        "day_tokens": [per_day[d] for d in days],
        "tenants": [t.tenant for t in rows],
        "tenant_tokens": [t.total_tokens for t in rows],
        "tenant_budgets": [t.budget for t in rows],
        "tenant_warnings": [round(t.budget * BUDGET_WARNING_RATIO) for t in rows],
    }
    return {
        "month": month,
        "tenants": rows,
        "per_day": [(datetime.fromtimestamp(d * 86_400, UTC).strftime("%Y-%m-%d"), per_day[d]) for d in days],
        "largest": [(-n, job_id, name, costs.get(job_id)) for n, job_id, name in heapq.nsmallest(TOP, largest)],
        "currency": b.settings.price_currency,
        "total_cost": round(sum(r.cost or 0.0 for r in rows), 6) if any(r.cost is not None for r in rows) else None,
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
    return pages.render(request, "usage.html", s, **usage_figures(b, pages.tenant_scope(pages.caller_of(s)), month))
