"""agentctl logs: the runbook's log review, embedded (JSON lines) or Azure (KQL for Application Insights).

The embedded runtime writes JSON lines to <DATA_DIR>/logs/runtime.jsonl with job_id/step/tenant
fields; in Azure the same fields are customDimensions, which the KQL below filters on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from shared.cli.output import CliError, JsonOpt, emit
from shared.observability import kql
from shared.observability.logs import log_files

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """'90s', '30m', '1h', '7d' ago, or an ISO-8601 timestamp (UTC when it names no zone)."""
    now = now or datetime.now(UTC)
    match = _DURATION.match(value.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        return now - timedelta(**{_UNITS[unit]: amount})
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise CliError(
            f"--since {value!r} is neither a duration nor a timestamp",
            "use e.g. 30m, 1h, 7d or 2025-01-31T09:00:00Z",
            kind="invalid",
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def read_log_lines(
    path: Path, *, job_id: str | None, level: str | None, since: datetime | None
) -> Iterator[dict[str, Any]]:
    """The JSON lines of the embedded runtime's log (and its rotated files) that pass the filters, oldest first."""
    for part in log_files(path):
        yield from _read_one(part, job_id=job_id, level=level, since=since)


def _read_one(path: Path, *, job_id: str | None, level: str | None, since: datetime | None) -> Iterator[dict[str, Any]]:
    floor = LEVELS[level] if level else 0
    try:
        lines = path.open(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return  # rotated away between listing and opening: its lines are in the next file
    with lines:
        for raw in lines:
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-write, or a non-JSON line from a library
            if not isinstance(record, dict):
                continue
            if job_id is not None and record.get("job_id") != job_id:
                continue
            if LEVELS.get(str(record.get("level", "")).upper(), 0) < floor:
                continue
            if since is not None:
                try:
                    at = datetime.fromisoformat(str(record.get("timestamp")))
                except ValueError:
                    continue
                if at < since:
                    continue
            yield record


def logs(
    job_id: Annotated[str | None, typer.Option("--job-id", help="Only this job's records.")] = None,
    level: Annotated[str | None, typer.Option(help="Minimum level: DEBUG, INFO, WARNING, ERROR, CRITICAL.")] = None,
    since: Annotated[str | None, typer.Option(help="Only newer records: 30m, 1h, 7d or an ISO timestamp.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most the newest N records.")] = 200,
    use_kql: Annotated[
        bool,
        typer.Option(
            "--kql",
            help="Print the Application Insights KQL instead of reading "
            "the embedded log (the default when "
            "APPLICATIONINSIGHTS_CONNECTION_STRING is set).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Review logs: embedded JSON lines filtered by job/level/time, or the KQL to run in Application Insights."""
    from shared.settings import get_settings

    if level is not None:
        level = level.upper()
        if level not in LEVELS:
            raise CliError(f"unknown level {level!r}", f"use one of: {', '.join(LEVELS)}", kind="invalid")
    settings = get_settings()
    if use_kql or settings.appinsights_connection_string:
        queries = kql.log_review(job_id, level, since)

        def render_kql(data: dict[str, str]) -> None:
            typer.echo(
                "Run in Application Insights > Logs, or with "
                "`az monitor app-insights query --app agent-appi-<env> -g <resource group> "
                "--analytics-query '<query>'`:\n"
            )
            for name, text in data.items():
                typer.echo(f"// {name}\n{text}\n")

        emit(
            {"source": "application-insights", "queries": queries}, lambda d: render_kql(d["queries"]), as_json=as_json
        )
        return
    path = settings.runtime_log_path
    if not log_files(path):
        raise CliError(
            f"no embedded runtime log at {path}",
            "start the runtime (`python -m shared.runtime`) with the same DATA_DIR, pass --data-dir, "
            "or use --kql for Application Insights",
            kind="not-found",
            exit_code=2,
        )
    records = list(read_log_lines(path, job_id=job_id, level=level, since=parse_since(since) if since else None))[
        -limit:
    ]

    def render(data: dict[str, Any]) -> None:
        for r in data["records"]:
            dims = " ".join(f"{k}={r[k]}" for k in ("job_id", "step", "tenant", "event") if k in r)
            typer.echo(
                f"{r.get('timestamp', '')[:23]} {r.get('level', ''):8} {r.get('message', '')}"
                + (f"  [{dims}]" if dims else "")
            )

    emit({"source": str(path), "records": records}, render, as_json=as_json)


def kql_command(
    name: Annotated[str | None, typer.Argument(help="A query name; all of them when omitted.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the runbook's Application Insights queries (KQL) by name: errors, failures, memory, ..."""
    if name is not None and name not in kql.QUERIES:
        raise CliError(
            f"no query named {name!r}", f"use one of: {', '.join(kql.QUERIES)}", kind="not-found", exit_code=2
        )
    chosen = {name: kql.QUERIES[name]} if name else dict(kql.QUERIES)
    emit(chosen, lambda d: typer.echo("\n\n".join(f"// {k}\n{v}" for k, v in d.items())), as_json=as_json)
