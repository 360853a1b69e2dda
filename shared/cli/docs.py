"""agentctl docs: put the operators' runbooks, designs and incident reports into the knowledge base.

    agentctl docs ingest ./runbooks "design/**/*.pdf" notes.docx --scope acme
    agentctl docs list --scope acme
    agentctl docs search "restore procedure" --scope acme
    agentctl docs show runbooks-restore-md-1a2b3c4d5e
    agentctl docs delete runbooks-restore-md-1a2b3c4d5e --scope acme

`ingest` reads and indexes in this process against the same backends the app uses (embedded or
Azure), so a folder goes in without an upload limit; `--queue` hands the files to the app as
an ingestion job instead. Either way, an unchanged file is skipped and a changed one replaces
its document's chunks.

`--scope` names the tenant that owns the documents; without it they go into `shared`, which every
tenant's jobs and searches read. `search --scope acme` shows what acme's jobs would retrieve (acme's
documents and the shared ones); `show` and `delete` with `--scope` refuse a document of another scope.
"""

from __future__ import annotations

import glob
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from shared.cli.context import backends
from shared.cli.output import CliError, JsonOpt, emit, fields, progress, table

docs_app = typer.Typer(
    help="The knowledge base: ingest files and folders, list, search, show, delete.", no_args_is_help=True
)
_SCOPE_RE = re.compile(r"^[A-Za-z0-9_\-]{1,100}$")


def _scope(value: str | None) -> str | None:
    if value is not None and not _SCOPE_RE.match(value):
        raise typer.BadParameter("a scope is a tenant id (letters, digits, '_', '-') or shared")
    return value


ScopeOpt = Annotated[
    str | None,
    typer.Option(
        "--scope",
        callback=_scope,
        help="The tenant that owns the documents, or shared (every tenant reads shared documents).",
    ),
]

# Files a folder walk leaves out: what editors, VCS and OSes leave beside documents.
_SKIPPED_PARTS = {".git", ".svn", "__pycache__", "node_modules", ".DS_Store"}


def collect(paths: list[str]) -> Iterator[tuple[str, Path]]:
    """(document name, file) for each file, folder (recursively) and glob; names are paths below the argument."""
    seen: set[Path] = set()
    for arg in paths:
        if glob.has_magic(arg):
            base = Path(arg.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0] or ".")
            base = base if base.is_dir() else base.parent
            candidates = [(Path(p), base) for p in sorted(glob.glob(arg, recursive=True))]
        elif Path(arg).is_dir():
            root = Path(arg)
            candidates = [(p, root.parent) for p in sorted(root.rglob("*"))]
        elif Path(arg).exists():
            candidates = [(Path(arg), Path(arg).parent)]
        else:
            raise CliError(f"{arg}: no such file, folder or matching glob", "check the path (quote globs)")
        for path, base in candidates:
            if not path.is_file() or _SKIPPED_PARTS & set(path.parts) or path.name.startswith("~$"):
                continue
            resolved = path.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            try:
                name = path.relative_to(base).as_posix()
            except ValueError:
                name = path.name
            yield name, path


@docs_app.command("ingest")
def ingest(
    paths: Annotated[list[str], typer.Argument(help="Files, folders (recursive) and globs, e.g. 'docs/**/*.pdf'.")],
    scope: Annotated[
        str | None,
        typer.Option(
            "--scope",
            callback=_scope,
            help="The tenant that owns the documents (default: shared, read by every tenant).",
        ),
    ] = None,
    queue: Annotated[
        bool, typer.Option("--queue", help="Submit as an ingestion job on the app's queue instead of ingesting here.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Ingest PDF, HTML, Word, Markdown and text files: added, updated, unchanged or refused with the reason."""
    from shared.services import ingestion, knowledge

    b = backends()
    files = list(collect(paths))
    if not files:
        raise CliError("no files found", "name files, folders or globs that match some files")
    if queue:
        job = ingestion.submit_ingestion(b, [(name, path.read_bytes()) for name, path in files], scope=scope)
        emit(job.model_dump(mode="json"), fields(f"ingestion {job.id}"), as_json=as_json)
        return
    outcomes: list[dict[str, Any]] = []
    started = time.perf_counter()
    chunks = 0
    with progress("ingest", as_json=as_json) as report:
        for n, (name, path) in enumerate(files, start=1):
            try:
                data = path.read_bytes()
            except OSError as exc:
                outcomes.append({"name": name, "status": "refused", "reason": f"cannot read: {exc.strerror}"})
                continue
            (outcome,) = knowledge.ingest(b, [(name, data)], scope=scope)
            outcomes.append(outcome.model_dump(mode="json", exclude_none=True))
            chunks += outcome.chunks if outcome.status != "unchanged" else 0
            elapsed = max(time.perf_counter() - started, 1e-6)
            report(n, len(files), f"{n / elapsed:.1f} files/s, {chunks / elapsed:.1f} chunks/s")
    elapsed = time.perf_counter() - started
    counts = Counter(o["status"] for o in outcomes)
    summary = {
        "files": len(files),
        **{status: counts.get(status, 0) for status in ("added", "updated", "unchanged", "refused")},
        "chunks_written": chunks,
        "seconds": round(elapsed, 3),
        "files_per_second": round(len(files) / elapsed, 1) if elapsed else None,
        "chunks_per_second": round(chunks / elapsed, 1) if elapsed else None,
    }

    def render(data: dict[str, Any]) -> None:
        s = data["summary"]
        typer.echo(
            f"{s['files']} file(s) in {s['seconds']} s: {s['added']} added, {s['updated']} updated, "
            f"{s['unchanged']} unchanged, {s['refused']} refused; {s['chunks_written']} chunks written "
            f"({s['files_per_second']} files/s, {s['chunks_per_second']} chunks/s)"
        )
        refused = [o for o in data["documents"] if o["status"] == "refused"]
        if refused:
            table(f"refused: {len(refused)}", ["file", "reason"], [[o["name"], o.get("reason", "")] for o in refused])

    emit({"summary": summary, "documents": outcomes}, render, as_json=as_json)


@docs_app.command("list")
def list_documents(
    scope: Annotated[str | None, typer.Option("--scope", callback=_scope, help="Only this scope's documents.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100_000)] = 1000,
    as_json: JsonOpt = False,
) -> None:
    """Documents in the knowledge base, with their current version and chunk count."""
    from shared.services import knowledge

    records = [r.model_dump(mode="json") for r in knowledge.list_documents(backends(), scope=scope, limit=limit)]

    def render(data: list[dict[str, Any]]) -> None:
        rows = [
            [d["id"], d.get("name") or "", d["kind"], d["version"], d["chunks"], d.get("pages") or "", d["updated_at"]]
            for d in data
        ]
        table(f"documents: {len(data)}", ["id", "name", "kind", "version", "chunks", "pages", "updated"], rows)

    emit(records, render, as_json=as_json)


@docs_app.command("search")
def search(
    query: str,
    scope: ScopeOpt = None,
    top: Annotated[int, typer.Option("--top", min=1, max=50)] = 5,
    as_json: JsonOpt = False,
) -> None:
    """What a tenant's jobs would retrieve for a query: its documents and the shared ones (--scope TENANT)."""
    from shared.contracts import knowledge_scopes

    b = backends()
    hits = b.index.search(query, top=top, scopes=knowledge_scopes(scope) if scope else None)

    def render(data: list[dict[str, Any]]) -> None:
        rows = [[h["doc_id"], h["chunk_id"], h["scope"], f"{h['score']:.3f}", h["snippet"][:80]] for h in data]
        table(f"hits: {len(data)}", ["doc", "chunk", "scope", "score", "snippet"], rows)

    emit([h.model_dump(mode="json") for h in hits], render, as_json=as_json)


@docs_app.command("show")
def show(doc_id: str, scope: ScopeOpt = None, as_json: JsonOpt = False) -> None:
    """One document: where it came from, its version and the versions before it (--scope: only if it is in it)."""
    from shared.services import knowledge

    emit(
        knowledge.get_document(backends(), doc_id, scopes=[scope] if scope else None).model_dump(mode="json"),
        fields(f"document {doc_id}"),
        as_json=as_json,
    )


@docs_app.command("delete")
def delete(doc_id: str, scope: ScopeOpt = None, as_json: JsonOpt = False) -> None:
    """Remove a document's chunks from the index and its record (--scope: only if it is in that scope)."""
    from shared.services import knowledge

    removed = knowledge.delete_document(backends(), doc_id, scopes=[scope] if scope else None)
    emit(
        {"id": doc_id, "chunks_removed": removed},
        lambda d: typer.echo(f"deleted {d['id']}: {d['chunks_removed']} chunk(s) removed"),
        as_json=as_json,
    )


@docs_app.command("ingestion")
def show_ingestion(
    ingestion_id: str,
    retry: Annotated[bool, typer.Option("--retry", help="Send its dead-lettered batches again.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """An ingestion job's progress (from `docs ingest --queue` or a large upload's 202); --retry its failed batches."""
    from shared.services import ingestion

    b = backends()
    job = ingestion.retry_failed(b, ingestion_id) if retry else ingestion.get_ingestion(b, ingestion_id)
    emit(job.model_dump(mode="json"), fields(f"ingestion {ingestion_id}"), as_json=as_json)
