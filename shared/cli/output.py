"""What every agentctl command shares: --json output, rich rendering, and errors that name the fix.

A command prints exactly one JSON document on stdout with --json (so scripts can pipe it to
jq), tables and progress bars otherwise. Failures exit non-zero with a message on stderr, and
with --json also a {"error": ...} document on stdout; never a bare traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from pydantic_core import to_jsonable_python
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

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
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[what]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=None, what="")

        def update(done: int, total: int | None, what: str) -> None:
            bar.update(task, completed=done, total=total, what=what)

        yield update


def report_error(exc: BaseException) -> int:
    """Print an exception as an operator-facing error; return the exit code."""
    err = explain(exc)
    if state.json:
        typer.echo(
            json.dumps({"error": {"kind": err.kind, "problem": err.problem, "fix": err.fix}}, ensure_ascii=False)
        )
    # Escaped: an exception's text may hold [brackets] that rich would take for markup.
    errors.print(f"[bold red]error:[/] {escape(err.problem)}", highlight=False, soft_wrap=True)
    if err.fix:
        errors.print(f"[bold]fix:[/] {escape(err.fix)}", highlight=False, soft_wrap=True)
    return err.exit_code


def explain(exc: BaseException) -> CliError:
    """An exception as problem + fix: a ServiceError states both; anything else still gets a sentence."""
    from shared.errors import ServiceError

    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, ServiceError):
        return CliError(str(exc).strip("'\""), exc.fix, kind=exc.kind, exit_code=exc.exit_code)
    if _is_azure_auth_error(exc):
        return CliError(
            f"Azure refused the CLI's identity: {type(exc).__name__}: {exc}"[:600],
            "sign in with `az login` (or set a managed identity) and give that identity the data roles "
            "the app's identity has (Service Bus Data Owner, Storage Blob Data Contributor, Search "
            "Index Data Contributor)",
            kind="auth",
            exit_code=6,
        )
    if isinstance(exc, PermissionError):
        return CliError(
            f"permission denied: {exc}",
            "run as a user who can read and write the data directory, "
            "or sign in with an identity that has the needed Azure role",
            kind="permission",
        )
    if isinstance(exc, ValueError):
        return CliError(str(exc), "check the command's arguments (--help)", kind="invalid")
    return CliError(
        f"unexpected {type(exc).__name__}: {exc}",
        "rerun with --debug for the traceback and report it",
        kind="unexpected",
        exit_code=1,
    )


def _is_azure_auth_error(exc: BaseException) -> bool:
    """azure-core's sign-in errors, checked by type; the SDK is imported only when it is installed."""
    try:
        from azure.core.exceptions import ClientAuthenticationError
        from azure.identity import CredentialUnavailableError
    except ImportError:  # pragma: no cover - both ship with the app's requirements
        return False
    return isinstance(exc, ClientAuthenticationError | CredentialUnavailableError)


def fields(title: str) -> Callable[[Any], None]:
    """A renderer for a flat-ish object: one row per top-level field, nested values as compact JSON."""

    def render(data: Any) -> None:
        items = data.items() if isinstance(data, dict) else enumerate(data)
        rows = [[k, v if not isinstance(v, dict | list) else _cell(v)[:300]] for k, v in items]
        table(title, ["field", "value"], rows)

    return render
