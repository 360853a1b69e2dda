"""agentctl usage: tokens this month against each tenant's budget (the runbook's token budget alert)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from shared.cli_output import CliError, JsonOpt, backends, emit, table


def usage(
    month: Annotated[str | None, typer.Option(help="YYYY-MM; this month (UTC) by default.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Tokens by tenant for the month, against budget, with % used; warns over 80%."""
    from shared import operations

    if month is not None and not _is_month(month):
        raise CliError(f"--month {month!r} is not a month", "use YYYY-MM, e.g. 2025-01", kind="invalid")
    result = operations.usage(backends(), month)

    def render(data: dict[str, Any]) -> None:
        rows = [[t.get("tenant"), t.get("prompt_tokens"), t.get("completion_tokens"), t.get("total_tokens"),
                 t.get("budget"), f"{t.get('percent_used', 0):.1f}%", "WARNING: over 80%" if t.get("warning") else ""]
                for t in data.get("tenants", [])]
        table(f"token usage {data.get('month')}", ["tenant", "prompt", "completion", "total", "budget", "used", ""],
              rows)

    emit(result, render, as_json=as_json)


def _is_month(value: str) -> bool:
    from datetime import datetime

    try:
        datetime.strptime(value, "%Y-%m")
    except ValueError:
        return False
    return len(value) == 7
