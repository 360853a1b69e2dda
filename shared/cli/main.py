"""agentctl: the operator CLI. The runbook's procedures as commands, against embedded or Azure backends.

    python -m shared.cli health            # or `agentctl health` once the project is installed
    python -m shared.cli --data-dir .data jobs list --status failed --json

The commands work on the backends directly (get_backends(): settings decide, exactly as in
the app), so the same command reads the embedded runtime's data directory while it runs (its
SQLite files are multi-process safe) or the Azure resources named by the app settings.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from shared.cli.context import backends
from shared.cli.docs import docs_app
from shared.cli.evaluate import evaluate
from shared.cli.jobs import dlq_app, jobs_app, queue_app
from shared.cli.keys import keys_app
from shared.cli.logs import kql_command, logs
from shared.cli.maintenance import backup_app, checks_app, restore, retention_app, sweep
from shared.cli.output import JsonOpt, emit, report_error, state, table
from shared.cli.usage import usage
from shared.cli.watch import jobs_watch
from shared.cli.webhooks import webhooks_app


class _Agentctl(typer.Typer):
    """Typer, with every failure turned into a message that names the problem and the fix."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except SystemExit:
            raise
        except Exception as exc:  # noqa: BLE001 - the one place errors become operator messages
            if state.debug:
                raise
            raise SystemExit(report_error(exc)) from None
        finally:
            from shared.bootstrap import reset_backends

            reset_backends()  # close queue/index connections before the process ends


app = _Agentctl(
    name="agentctl",
    help=__doc__.splitlines()[0],
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def main(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Embedded runtime data directory (sets DATA_DIR). Without Azure settings the CLI "
            "uses DATA_DIR or .data.",
        ),
    ] = None,
    settings_file: Annotated[
        Path | None,
        typer.Option(
            "--settings",
            exists=True,
            dir_okay=False,
            help="A local.settings.json-shaped file whose Values are applied (the environment wins), e.g. the app "
            "settings of an Azure environment.",
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
) -> None:
    """Operate agent-framework: health, queue and dead letters, jobs, documents, usage, backups, checks, keys, logs."""
    from shared.bootstrap import reset_backends
    from shared.settings import reset_settings

    state.debug = debug
    if settings_file is not None:
        from shared.settings import load_local_settings

        load_local_settings(settings_file)
    if data_dir is not None:
        os.environ["DATA_DIR"] = str(data_dir)  # the CLI's entry point is where settings are allowed to start
    reset_settings()
    reset_backends()


@app.command()
def health(as_json: JsonOpt = False) -> None:
    """Check every dependency (queue, storage, index, model) for real, with timings. Exit 1 when degraded."""
    from shared.services import health as health_service

    result = health_service.check(backends())

    def render(data: dict[str, Any]) -> None:
        rows = [
            [name, dep["status"], dep.get("ms"), dep.get("detail") or dep.get("error", "")]
            for name, dep in data["dependencies"].items()
        ]
        table(f"health: {data['status']}", ["dependency", "status", "ms", "detail"], rows)

    emit(result, render, as_json=as_json)
    if result["status"] != "ok":
        raise typer.Exit(1)


app.add_typer(queue_app, name="queue")
app.add_typer(dlq_app, name="dlq")
jobs_app.command("watch")(jobs_watch)
app.add_typer(jobs_app, name="jobs")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(keys_app, name="keys")
app.add_typer(docs_app, name="docs")
app.command()(usage)
app.add_typer(backup_app, name="backup")
app.command()(restore)
app.add_typer(checks_app, name="checks")
app.command()(sweep)
app.add_typer(retention_app, name="retention")
app.command()(logs)
app.command("kql")(kql_command)
app.command("eval")(evaluate)


if __name__ == "__main__":
    sys.exit(app())
