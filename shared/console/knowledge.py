"""Knowledge: the indexed documents with chunk counts, upload (drag and drop, with progress), and a
search box that shows what the agent would retrieve, with scores."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from shared.console import pages, session
from shared.console.access import BackendsDep
from shared.console.pages import SessionDep
from shared.contracts import knowledge_scopes
from shared.engine.backends import Backends
from shared.errors import InvalidRequest
from shared.services import knowledge

router = APIRouter()
LIST_LIMIT = 20_000  # chunks read to list documents; past it the list says it is partial


class IndexedDocumentRow(BaseModel):
    id: str
    title: str
    chunks: int
    # From the document's record (issue 15); None for documents indexed before records existed.
    scope: str | None = None
    version: str | None = None
    earlier_versions: int = 0
    kind: str | None = None


def documents(b: Backends, scopes: list[str] | None = None) -> tuple[list[IndexedDocumentRow], bool]:
    """Documents in the index with their chunk counts (by export, in key order) and their records'
    scope and versions, by scope then id, only those in scopes (None: all); True when cut short."""
    rows: dict[str, IndexedDocumentRow] = {}
    after, read, partial = None, 0, True
    while read < LIST_LIMIT:
        page = b.index.export(after_key=after, size=1000)
        for c in page:
            if scopes is not None and c.scope not in scopes:
                continue
            row = rows.setdefault(c.doc_id, IndexedDocumentRow(id=c.doc_id, title=c.title, chunks=0, scope=c.scope))
            row.chunks += 1
        read += len(page)
        if len(page) < 1000:
            partial = False
            break
        after = page[-1].key
    for record in knowledge.list_documents(b, limit=LIST_LIMIT):
        found = rows.get(record.id)
        if found is not None:
            found.scope, found.version, found.kind = record.scope, record.version, record.kind
            found.earlier_versions = len(record.previous_versions)
    return sorted(rows.values(), key=lambda r: (r.scope or "", r.id)), partial


def scopes(rows: list[IndexedDocumentRow]) -> dict[str, int]:
    """Documents per scope ("" for unscoped), for the scope filter."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.scope or ""] = counts.get(r.scope or "", 0) + 1
    return dict(sorted(counts.items()))


@router.get("/knowledge")
def knowledge_page(
    request: Request,
    s: SessionDep,
    b: BackendsDep,
    q: Annotated[str, Query(max_length=1000)] = "",
    scope: Annotated[str, Query(max_length=100)] = "",
) -> Response:
    # An operator sees its tenant's documents and the shared ones, as its tenant's jobs do; an admin every scope.
    tenant = pages.tenant_scope(pages.caller_of(s))
    visible = knowledge_scopes(tenant) if tenant is not None else None
    every, partial = documents(b, visible)
    docs = [d for d in every if d.scope == scope] if scope else every
    hits = b.index.search(q.strip(), top=10, scopes=visible) if q.strip() else None
    return pages.render(
        request,
        "knowledge.html",
        s,
        documents=docs,
        partial=partial,
        q=q,
        hits=hits,
        total=b.index.count() if visible is None else sum(d.chunks for d in every),
        scopes=scopes(every),
        scope=scope,
    )


def _ingest(b: Backends, files: list[tuple[str, bytes]], scope: str) -> list[knowledge.IndexedDocument]:
    """Read (type from the bytes), index into scope; if every file is refused, the first refusal is the answer."""
    sources, errors = knowledge.read_files(files, scope=scope)
    if not sources:
        raise errors[0][1]
    return knowledge.index_documents(b, sources) + [knowledge.refused(name, error) for name, error in errors]


@router.post("/knowledge/upload")
async def upload(request: Request, s: SessionDep, b: BackendsDep) -> Response:
    """Multipart `file` fields plus `csrf`; JSON for the page's script, which shows the progress."""
    caller = pages.caller_of(s)
    pages.require_platform(request, caller)
    form = await request.form()
    csrf = form.get("csrf")
    session.check_csrf(s, csrf if isinstance(csrf, str) else None)
    files = [(f.filename or "upload", await f.read()) for f in form.getlist("file") if not isinstance(f, str)]
    if not files:
        raise InvalidRequest("choose at least one file: PDF, HTML, Word, Markdown or text")
    # Uploads go into the signed-in operator's tenant, as the API's do by default.
    indexed = await run_in_threadpool(_ingest, b, files, caller.tenant)
    return JSONResponse({"indexed": [d.model_dump() for d in indexed]})
