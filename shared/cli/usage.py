"""agentctl usage: tokens this month against each tenant's budget (the runbook's token budget alert)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from shared.cli.context import backends
from shared.cli.output import JsonOpt, emit, table
from shared.engine.ledger import BUDGET_WARNING_RATIO


def usage(
    month: Annotated[str | None, typer.Option(help="YYYY-MM; this month (UTC) by default.")] = None,
    top: Annotated[int, typer.Option(min=0, help="Also list the month's N largest jobs by tokens.")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """Tokens by tenant for the month against budget, % used, a warning over 80%; and the largest jobs."""
    from shared.services import operations

    result = operations.usage(backends(), month, top=top)

    def render(data: dict[str, Any]) -> None:
        rows = [
            [
                t["tenant"],
                t["prompt_tokens"],
                t["completion_tokens"],
                t["total_tokens"],
                t["budget"],
                f"{t['percent_used']:.1f}%",
                t["jobs"],
                f"WARNING: over {BUDGET_WARNING_RATIO:.0%} of budget" if t["warning"] else "",
            ]
            for t in data["tenants"]
        ]
        table(
            f"token usage {data['month']}: {data['total_tokens']} tokens",
            ["tenant", "prompt", "completion", "total", "budget", "used", "jobs", ""],
            rows,
        )
        if data["top_jobs"]:
            table(
                "largest jobs",
                ["job", "tenant", "tokens"],
                [[j["job_id"], j["tenant"], j["total_tokens"]] for j in data["top_jobs"]],
            )

    emit(result, render, as_json=as_json)
