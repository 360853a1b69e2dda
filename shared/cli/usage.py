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
    cost: Annotated[
        bool, typer.Option("--cost", help="Show money next to tokens (prices from MODEL_PRICES, PRICE_CURRENCY).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Tokens (and with --cost, money) by tenant for the month against budget, a warning over 80%; the largest jobs."""
    from shared.services import operations

    result = operations.usage(backends(), month, top=top)

    def money(amount: float | None) -> str:
        return "unpriced" if amount is None else f"{amount:.4f}"

    def render(data: dict[str, Any]) -> None:
        rows = []
        for t in data["tenants"]:
            row = [t["tenant"], t["prompt_tokens"], t["completion_tokens"], t["total_tokens"]]
            if cost:
                row.append(money(t["cost"]))
            row += [t["budget"], f"{t['percent_used']:.1f}%"]
            if cost:
                row += [
                    "" if t["cost_budget"] is None else f"{t['cost_budget']:g}",
                    "" if t["cost_percent_used"] is None else f"{t['cost_percent_used']:.1f}%",
                ]
            row += [t["jobs"], f"WARNING: over {BUDGET_WARNING_RATIO:.0%} of budget" if t["warning"] else ""]
            rows.append(row)
        columns = ["tenant", "prompt", "completion", "total"]
        columns += ["cost"] if cost else []
        columns += ["budget", "used"]
        columns += ["cost budget", "cost used"] if cost else []
        columns += ["jobs", ""]
        title = f"token usage {data['month']}: {data['total_tokens']} tokens"
        if cost:
            title += (
                f", {money(data['total_cost'])} {data['currency']} at {data['priced_model']} prices"
                if data["total_cost"] is not None
                else " (no price for this model: set MODEL_PRICES)"
            )
        table(title, columns, rows)
        if data["top_jobs"]:
            table(
                "largest jobs",
                ["job", "tenant", "tokens", *(["cost"] if cost else [])],
                [
                    [j["job_id"], j["tenant"], j["total_tokens"], *([money(j["cost"])] if cost else [])]
                    for j in data["top_jobs"]
                ],
            )

    emit(result, render, as_json=as_json)
