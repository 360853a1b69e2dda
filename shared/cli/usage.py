"""agentctl usage: tokens this month against each tenant's budget (the runbook's token budget alert)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from shared.cli.output import JsonOpt, backends, emit, table

if TYPE_CHECKING:
    from shared.engine.backends import Backends


def usage(
    month: Annotated[str | None, typer.Option(help="YYYY-MM; this month (UTC) by default.")] = None,
    top: Annotated[int, typer.Option(min=0, help="Also list the month's N largest jobs by tokens.")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """Tokens by tenant for the month against budget, % used, a warning over 80%; and the largest jobs."""
    from shared.services import operations

    b = backends()
    report = operations.usage(b, month)
    tenants = [t.tenant for t in report.tenants]
    result = {**report.model_dump(mode="json"), "top_jobs": _top_jobs(b, report.month, tenants, top)}

    def render(data: dict[str, Any]) -> None:
        rows = [[t["tenant"], t["prompt_tokens"], t["completion_tokens"], t["total_tokens"], t["budget"],
                 f"{t['percent_used']:.1f}%", t["jobs"], "WARNING: over 80% of budget" if t["warning"] else ""]
                for t in data["tenants"]]
        table(f"token usage {data['month']}: {data['total_tokens']} tokens",
              ["tenant", "prompt", "completion", "total", "budget", "used", "jobs", ""], rows)
        if data["top_jobs"]:
            table("largest jobs", ["job", "tenant", "tokens"],
                  [[j["job_id"], j["tenant"], j["total_tokens"]] for j in data["top_jobs"]])

    emit(result, render, as_json=as_json)


def _top_jobs(b: Backends, month: str, tenants: list[str], top: int) -> list[dict[str, Any]]:
    """The runbook's first step on a token alert: which jobs used the most (from the usage ledgers)."""
    if top == 0:
        return []
    every = [{"job_id": job_id, "tenant": tenant, "total_tokens": used.total_tokens}
             for tenant in tenants for job_id, used in b.ledger.by_job(tenant, month).items()]
    return sorted(every, key=lambda j: (-j["total_tokens"], j["job_id"]))[:top]
