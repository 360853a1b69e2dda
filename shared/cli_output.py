"""What every agentctl command shares: --json output, rich rendering, and errors that name the fix.

A command prints exactly one JSON document on stdout with --json (so scripts can pipe it to
jq), tables and progress bars otherwise. Failures exit non-zero with a message on stderr, and
with --json also a {"error": ...} document on stdout; never a bare traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic_core import to_jsonable_python
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from shared.composition import Backends
    from shared.settings import Settings

console = Console()
errors = Console(stderr=True)


class _State:
    json = False
    debug = False


state = _State()


def _set_json(value: bool) -> bool:
    # Remembered globally so the error handler, which runs outside the command, answers in kind.
    if value:
        state.json = True
    return value


JsonOpt = Annotated[bool, typer.Option("--json", help="Print one machine-readable JSON document.", callback=_set_json)]


class CliError(Exception):
    """An operator-facing failure: what went wrong and what to do about it."""

    def __init__(self, problem: str, fix: str = "", *, kind: str = "error", exit_code: int = 1) -> None:
        super().__init__(problem)
        self.problem, self.fix, self.kind, self.exit_code = problem, fix, kind, exit_code


def backends() -> Backends:
    """The backends the settings describe, built once per CLI process."""
    from shared.composition import get_backends

    b = get_backends()
    configure_logging(b.settings)
    return b


def jsonable(value: Any) -> Any:
    return to_jsonable_python(value, fallback=str)


def emit(value: Any, render: Callable[[Any], None] | None = None, *, as_json: bool) -> None:
    """Print value as JSON or through render (a plain JSON dump when there is no renderer)."""
    data = jsonable(value)
    if as_json or render is None:
        typer.echo(json.dumps(data, ensure_ascii=False, indent=None if as_json else 2))
    else:
        render(data)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    if not rows:
        console.print(title if ":" in title else f"{title}: none", highlight=False)
        return
    t = Table(title=title, title_justify="left")
    for column in columns:
        # Fold rather than truncate: operators copy job and message ids out of these tables.
        t.add_column(column, overflow="fold")
    for row in rows:
        t.add_row(*[_cell(cell) for cell in row])
    console.print(t)


@contextmanager
def progress(description: str, *, as_json: bool) -> Iterator[Callable[[int, int | None, str], None]]:
    """A progress(done, total|None, what) callback: a rich bar, or silence under --json."""
    if as_json or not console.is_terminal:
        yield lambda done, total, what: None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[what]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=None, what="")

        def update(done: int, total: int | None, what: str) -> None:
            bar.update(task, completed=done, total=total, what=what)

        yield update


def report_error(exc: BaseException) -> int:
    """Print an exception as an operator-facing error; return the exit code."""
    err = explain(exc)
    if state.json:
        typer.echo(json.dumps({"error": {"kind": err.kind, "problem": err.problem, "fix": err.fix}},
                              ensure_ascii=False))
    # Escaped: an exception's text may hold [brackets] that rich would take for markup.
    errors.print(f"[bold red]error:[/] {escape(err.problem)}", highlight=False, soft_wrap=True)
    if err.fix:
        errors.print(f"[bold]fix:[/] {escape(err.fix)}", highlight=False, soft_wrap=True)
    return err.exit_code


def explain(exc: BaseException) -> CliError:
    """Map the service layer's exceptions to problem + fix. Unknown ones still get a sentence."""
    from shared.composition import ConfigurationError
    from shared.ports import DependencyUnavailable

    if isinstance(exc, CliError):
        return exc
    name = type(exc).__name__
    if isinstance(exc, ConfigurationError):
        return CliError(str(exc), "fix the app setting named above (environment, local.settings.json or app "
                        "settings), or use --data-dir for the embedded runtime", kind="configuration", exit_code=3)
    if isinstance(exc, DependencyUnavailable):
        return CliError(f"a backend is unreachable: {exc}", "check `agentctl health`; for the embedded runtime "
                        "check --data-dir / DATA_DIR points at its data directory", kind="unavailable", exit_code=4)
    if isinstance(exc, LookupError) and not isinstance(exc, KeyError | IndexError):  # *NotFound, not a bug
        return CliError(str(exc).strip("'\""), "check the id (`agentctl jobs list`, `agentctl dlq list`, "
                        "`agentctl backup list`) and that --data-dir / the Azure settings point at the right "
                        "environment", kind="not-found", exit_code=2)
    if name == "LeaseHeld":
        return CliError(str(exc), "another instance (a timer or another operator) is doing this now; wait for it "
                        "to finish, or check `agentctl logs --since 1h`", kind="busy", exit_code=5)
    if name == "RestoreMismatch":
        return CliError(f"restore refused: {exc}", "the backup does not match what it claims (missing or "
                        "changed files); pick another one with `agentctl backup list`", kind="restore-mismatch")
    if name in ("JobAlreadyFinished", "JobNotFinished", "JobNotResubmittable", "JobNotRerunnable"):
        return CliError(str(exc), "see `agentctl jobs show <id>` for its status", kind="conflict")
    if any(word in name for word in ("Authentication", "Authorization", "Credential")):
        # Azure SDK sign-in and role errors, matched by name so the CLI need not import the SDKs.
        return CliError(f"Azure refused the CLI's identity: {name}: {exc}"[:600],
                        "sign in with `az login` (or set a managed identity) and give that identity the data roles "
                        "the app's identity has (Service Bus Data Owner, Storage Blob Data Contributor, Search "
                        "Index Data Contributor)", kind="auth", exit_code=6)
    if isinstance(exc, PermissionError):
        return CliError(f"permission denied: {exc}", "run as a user who can read and write the data directory, "
                        "or sign in with an identity that has the needed Azure role", kind="permission")
    if isinstance(exc, ValueError):
        return CliError(str(exc), "check the command's arguments (--help)", kind="invalid")
    return CliError(f"unexpected {name}: {exc}", "rerun with --debug for the traceback and report it",
                    kind="unexpected", exit_code=1)


def fields(title: str) -> Callable[[Any], None]:
    """A renderer for a flat-ish object: one row per top-level field, nested values as compact JSON."""

    def render(data: Any) -> None:
        items = data.items() if isinstance(data, dict) else enumerate(data)
        rows = [[k, v if not isinstance(v, dict | list) else _cell(v)[:300]] for k, v in items]
        table(title, ["field", "value"], rows)

    return render


def configure_logging(settings: Settings) -> None:
    """Warnings to stderr; on the embedded runtime also the JSON lines of its log, as an audit trail.

    An operator's re-submission or purge then shows in `agentctl logs` beside the runtime's own
    records. stdout stays reserved for the command's output (one JSON document under --json).
    """
    import logging

    from shared.logs import JobDimensions, JsonLines

    root = logging.getLogger()
    if getattr(root, "_agentctl", False):
        return
    root._agentctl = True  # type: ignore[attr-defined]
    stderr = logging.StreamHandler()
    stderr.setLevel(logging.WARNING)
    stderr.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(stderr)
    root.setLevel(logging.INFO)
    embedded = not (settings.storage_connection or settings.storage_blob_uri)
    if embedded and not settings.appinsights_connection_string:
        path = settings.data_dir / "logs" / "runtime.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        audit = logging.FileHandler(path, encoding="utf-8")
        audit.setFormatter(JsonLines())
        audit.addFilter(JobDimensions())
        root.addHandler(audit)
