"""agentctl backup / restore / checks / sweep / retention: the timers' work, run now by an operator.

The same service functions the maintenance timers call (shared/maintenance/*), so a manual run
and a scheduled run do the same thing.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from shared.cli.context import backends
from shared.cli.output import JsonOpt, emit, fields, progress, table

backup_app = typer.Typer(help="Backups of job state, reports, ledgers and the knowledge index.", no_args_is_help=True)
checks_app = typer.Typer(help="The weekly operations checks.", no_args_is_help=True)
retention_app = typer.Typer(help="Retention of old checkpoints.", no_args_is_help=True)


@backup_app.command("run")
def backup_run(as_json: JsonOpt = False) -> None:
    """Take a backup now (the nightly BACKUP_SCHEDULE timer does the same)."""
    from shared.maintenance import backup

    with progress("backup", as_json=as_json) as report:
        manifest = backup.run_backup(backends(), progress=report)
    emit(manifest, lambda d: fields(f"backup {d['id']}")({k: v for k, v in d.items() if k != "files"}), as_json=as_json)


@backup_app.command("list")
def backup_list(as_json: JsonOpt = False) -> None:
    """Backups that can be restored, newest first."""
    from shared.maintenance import backup

    found = backup.list_backups(backends())

    def render(data: list[dict[str, Any]]) -> None:
        columns = ["id", "created_at", "chunks", "documents", "objects", "bytes"]
        table(f"backups: {len(data)}", columns, [[d.get(c) for c in columns] for d in data])

    emit(found, render, as_json=as_json)


def restore(
    backup_id: Annotated[str, typer.Argument(help="A backup id from `agentctl backup list`.")],
    as_json: JsonOpt = False,
) -> None:
    """Restore a backup: verify it, rebuild the knowledge index, put back missing job state."""
    from shared.maintenance import backup

    with progress(f"restore {backup_id}", as_json=as_json) as report:
        result = backup.restore(backends(), backup_id, progress=report)
    emit(result, fields(f"restored {backup_id}"), as_json=as_json)


@checks_app.command("run")
def checks_run(as_json: JsonOpt = False) -> None:
    """Run the weekly checks now: dead letters, stale jobs, budgets, backups, failure rate."""
    from shared.maintenance import checks

    report = checks.run_weekly_checks(backends())
    # The report's own Markdown is what the timer stores under ops/reports/; show the operator the same.
    emit(
        report,
        lambda d: typer.echo(checks.render_markdown(report) + f"\nstored at {d['markdown_key']}"),
        as_json=as_json,
    )


def sweep(as_json: JsonOpt = False) -> None:
    """Run the dead-letter sweep now: re-submit what may succeed, fail the jobs that cannot."""
    from shared.maintenance import sweep as sweep_service

    result = sweep_service.sweep_dead_letters(backends())
    emit(result, fields("dead-letter sweep"), as_json=as_json)


@retention_app.command("run")
def retention_run(as_json: JsonOpt = False) -> None:
    """Apply retention now: every container's rule (shared/engine/layout.py), as the daily timer does."""
    from shared.maintenance import retention

    result = retention.apply_retention(backends())
    emit(result, fields("retention"), as_json=as_json)
