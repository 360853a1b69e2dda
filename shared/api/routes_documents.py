"""/api/documents, /api/ingestions and /api/search: feed the knowledge index and check what it retrieves.

Tenants own their knowledge. A caller reads its tenant's scope and `shared`; an upload goes into
the caller's tenant unless it asks for `shared` (may_publish_shared) or, as an admin, any scope.
A document outside the caller's scopes answers 404, as if it did not exist.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from shared.api.deps import BackendsDep
from shared.api.problems import validation_error
from shared.api.schema import problem_responses
from shared.api.security import Caller, CallerDep, OperatorDep, may_act_for, role_at_least
from shared.contracts import SHARED_SCOPE, Chunk, Document, SearchHit, knowledge_scopes
from shared.engine.backends import Backends
from shared.errors import Forbidden, InvalidRequest
from shared.services import extraction, ingestion, knowledge

router = APIRouter(prefix="/api", tags=["knowledge"])
_documents = TypeAdapter(Document | list[Document])
_document = TypeAdapter(Document)
ScopeQuery = Annotated[str | None, Query(max_length=100, pattern=r"^[A-Za-z0-9_\-]+$")]
# Bounded: an integer past SQLite's 64 bits would fail in the index (schemathesis found it as a 500).
ChunkNumber = Annotated[int, Path(ge=0, le=1_000_000_000)]


class IndexResult(BaseModel):
    indexed: list[knowledge.IndexedDocument]


# --- who may read and write which scope ---------------------------------------------------------


def may_publish_shared(caller: Caller) -> bool:
    """Whether the caller may put documents into (or remove them from) the shared scope every tenant reads.

    Only the platform admin: what is shared reaches every tenant's jobs, so no tenant's operator decides it.
    """
    return role_at_least(caller.role, "admin")


def may_read_any_scope(caller: Caller) -> bool:
    """The platform admin reads every tenant's documents; everyone else their own tenant's and shared."""
    return role_at_least(caller.role, "admin")


def browse_scopes(caller: Caller, scope: str | None = None) -> list[str]:
    """The scopes a search or listing covers: the caller's own tenant and shared, or the one scope named.

    Naming a scope outside those is 403, except for an admin, who looks across tenants only by naming one.
    """
    own = knowledge_scopes(caller.tenant)
    if scope is None:
        return own
    if scope not in own and not may_read_any_scope(caller):
        raise Forbidden(f"you may read the scopes {', '.join(own)} only")
    return [scope]


def id_scopes(caller: Caller) -> list[str] | None:
    """The scopes in which caller may reach a document by its id (None: any, for an admin)."""
    return None if may_read_any_scope(caller) else knowledge_scopes(caller.tenant)


def may_manage(caller: Caller, scope: str) -> bool:
    """Whether caller may add to, replace in or delete from scope."""
    if scope == SHARED_SCOPE:
        return may_publish_shared(caller)
    return may_act_for(caller, scope)


def upload_scope(caller: Caller, scope: str | None) -> str:
    """The scope an upload goes into: the one asked for if the caller may write it, else the caller's tenant."""
    wanted = scope or caller.tenant
    if not may_manage(caller, wanted):
        raise Forbidden(f"documents of tenant {caller.tenant} go into scope {caller.tenant}; {wanted} is not yours")
    return wanted


@router.post(
    "/documents",
    status_code=201,
    response_model=IndexResult,
    responses={
        202: {"model": ingestion.IngestionJob, "description": "A large upload, queued as an ingestion job"},
        **problem_responses(409, 415),
    },
    summary="Ingest documents: PDF, HTML, Word, Markdown, text or JSON",
    description="JSON: one document or a list of `{id, title, url?, content}`. Files: multipart `file` field(s), "
    "or a raw body with `?filename=` (its type is read from the bytes: PDF, DOCX, HTML, Markdown, text). "
    "Each document is `added`, `updated` (its chunks swapped for the new version's), `unchanged`, or `refused` "
    "with the reason. An upload of more than INGEST_SYNC_MAX_FILES files (or JSON documents) or "
    "INGEST_SYNC_MAX_BYTES bytes becomes an ingestion job: 202 with a Location to poll. Documents go into the "
    "caller's tenant scope by default; `?scope=shared` publishes them for every tenant (operators). A `doc_id` "
    "that a document of another scope already has is refused with 409, never overwritten.",
)
async def add_documents(
    request: Request,
    caller: OperatorDep,
    b: BackendsDep,
    filename: Annotated[str | None, Query(max_length=300)] = None,
    doc_id: Annotated[str | None, Query(max_length=100, description="The document id (default: from the name)")] = None,
    scope: ScopeQuery = None,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> IndexResult | JSONResponse:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    scope = upload_scope(caller, scope)
    if ctype == "application/json":
        body = await request.body()
        # Validating a large list is CPU work (~150 ms for 20,000 documents): off the event loop too.
        docs = await run_in_threadpool(_json_documents, body)
        if not docs:
            raise InvalidRequest("no documents in the request")
        settings = b.settings
        if len(docs) > settings.ingest_sync_max_files or len(body) > settings.ingest_sync_max_bytes:
            # As a large multipart upload: an ingestion job. Indexing 20,000 documents takes a minute,
            # too long for one request, and its 20,000 results would be serialized on the event loop.
            def submit() -> ingestion.IngestionJob:
                knowledge.refuse_taken_ids(b, (d.id for d in docs), scope)  # the same 409 as a small upload
                return ingestion.submit_ingestion(b, [], documents=docs, scope=scope, idempotency_key=idempotency_key)

            job = await run_in_threadpool(submit)
            return JSONResponse(
                job.model_dump(mode="json"), status_code=202, headers={"Location": f"/api/ingestions/{job.id}"}
            )
        # Chunking and indexing are CPU and disk work: off the event loop, so other requests keep flowing.
        return IndexResult(indexed=await run_in_threadpool(_index_json, b, docs, scope))
    if ctype == "multipart/form-data":
        # Parsing thousands of parts is CPU work: in a worker thread, so the event loop keeps answering.
        files = await run_in_threadpool(_files_of, request.headers, await request.body(), b.settings.ingest_max_files)
    else:
        declared = extraction.DECLARED_KINDS.get(ctype)
        if not filename and declared is None:
            raise InvalidRequest("a file upload needs ?filename= (with the document's full name, e.g. guide.pdf)")
        files = [(filename or f"upload.{declared}", await request.body())]
    if not files:
        raise InvalidRequest("no documents in the request")
    if doc_id is not None and len(files) != 1:
        raise InvalidRequest("?doc_id= names one document; send one file with it")
    settings = b.settings
    if len(files) > settings.ingest_sync_max_files or sum(len(d) for _, d in files) > settings.ingest_sync_max_bytes:
        job = await run_in_threadpool(
            lambda: ingestion.submit_ingestion(b, files, scope=scope, idempotency_key=idempotency_key)
        )
        return JSONResponse(
            job.model_dump(mode="json"), status_code=202, headers={"Location": f"/api/ingestions/{job.id}"}
        )
    declared_type = ctype if ctype != "multipart/form-data" else None
    return IndexResult(indexed=await run_in_threadpool(_ingest_now, b, files, doc_id, scope, declared_type))


def _index_json(b: Backends, docs: list[Document], scope: str) -> list[knowledge.IndexedDocument]:
    """Index JSON documents into scope, after checking that no id is another scope's (409, nothing written)."""
    knowledge.refuse_taken_ids(b, (d.id for d in docs), scope)
    return knowledge.index_documents(b, docs, scope=scope)


def _json_documents(body: bytes) -> list[Document]:
    """The JSON body's documents, parsed and validated one document at a time.

    json.loads or validate_json over 20,000 documents holds the GIL for 80-150 ms at a stretch,
    and every request on the event loop waits that long; between two documents the GIL can pass.
    """
    try:
        items = _json_list_items(body.decode("utf-8"))
    except ValueError:  # not UTF-8 or not JSON: pydantic words the error below
        items = None
    if items is None:
        try:
            parsed = _documents.validate_json(body)
        except ValidationError as exc:
            raise validation_error(list(exc.errors())) from None
        return parsed if isinstance(parsed, list) else [parsed]
    documents = []
    for n, item in enumerate(items):
        try:
            documents.append(_document.validate_python(item))
        except ValidationError as exc:
            raise validation_error([{**e, "loc": (n, *e["loc"])} for e in exc.errors()]) from None
    return documents


_SPACE = re.compile(r"[ \t\n\r]*")


def _json_list_items(text: str) -> list[Any] | None:
    """A top-level JSON array's items, decoded one by one; None when the text is not an array."""
    decoder = json.JSONDecoder()
    at = _SPACE.match(text, 0).end()  # type: ignore[union-attr]
    if not text.startswith("[", at):
        return None
    at = _SPACE.match(text, at + 1).end()  # type: ignore[union-attr]
    items: list[Any] = []
    if text.startswith("]", at):
        at += 1
    else:
        while True:
            item, at = decoder.raw_decode(text, at)
            items.append(item)
            at = _SPACE.match(text, at).end()  # type: ignore[union-attr]
            if text.startswith(",", at):
                at = _SPACE.match(text, at + 1).end()  # type: ignore[union-attr]
            elif text.startswith("]", at):
                at += 1
                break
            else:
                raise ValueError(f"expected ',' or ']' at {at}")
    if _SPACE.match(text, at).end() != len(text):  # type: ignore[union-attr]
        raise ValueError("extra data after the array")
    return items


def _ingest_now(
    b: Backends, files: list[tuple[str, bytes]], doc_id: str | None, scope: str, declared: str | None
) -> list[knowledge.IndexedDocument]:
    """Read, then index: when every file is refused, the first refusal is the answer (415 or 422)."""
    if doc_id is not None or declared is not None:
        name, data = files[0]
        source = knowledge.read_upload(name, data, doc_id=doc_id, scope=scope, declared=declared)
        return knowledge.index_documents(b, [source])
    sources, errors = knowledge.read_files(files, scope=scope)
    if not sources:
        raise errors[0][1]
    return knowledge.index_documents(b, sources) + [knowledge.refused(name, error) for name, error in errors]


def _files_of(headers: Headers, body: bytes, max_files: int) -> list[tuple[str, bytes]]:
    """The `file` parts of a multipart body as (file name, bytes), parsed on this (worker) thread's own loop."""

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    async def parse() -> list[tuple[str, bytes]]:
        try:
            form = await MultiPartParser(headers, stream(), max_files=max_files).parse()
        except MultiPartException as exc:
            raise InvalidRequest(f"the multipart body cannot be read: {exc.message}") from None
        try:
            return [(f.filename or "upload", await f.read()) for f in form.getlist("file") if isinstance(f, UploadFile)]
        finally:
            await form.close()

    return asyncio.run(parse())


@router.get("/ingestions/{ingestion_id}", response_model=ingestion.IngestionJob, summary="An ingestion job's progress")
def get_ingestion(ingestion_id: str, caller: OperatorDep, b: BackendsDep) -> ingestion.IngestionJob:
    return _visible_ingestion(caller, b, ingestion_id)


def _visible_ingestion(caller: Caller, b: Backends, ingestion_id: str) -> ingestion.IngestionJob:
    """The ingestion job if its scope is one the caller manages; IngestionNotFound (404) otherwise."""
    job = ingestion.get_ingestion(b, ingestion_id)
    if not may_manage(caller, job.scope or SHARED_SCOPE):
        raise ingestion.IngestionNotFound(f"no ingestion {ingestion_id}")
    return job


@router.post(
    "/ingestions/{ingestion_id}/retry",
    status_code=202,
    response_model=ingestion.IngestionJob,
    summary="Send an ingestion's dead-lettered batches again",
    responses=problem_responses(409),
)
def retry_ingestion(ingestion_id: str, caller: OperatorDep, b: BackendsDep) -> ingestion.IngestionJob:
    _visible_ingestion(caller, b, ingestion_id)
    return ingestion.retry_failed(b, ingestion_id)


@router.get(
    "/documents",
    response_model=list[knowledge.DocumentRecord],
    summary="Documents in the knowledge base",
    description="The caller's tenant's documents and the shared ones; `?scope=` narrows to one of them "
    "(an admin may name any scope).",
)
def list_documents(
    caller: OperatorDep, b: BackendsDep, scope: ScopeQuery = None, limit: Annotated[int, Query(ge=1, le=5000)] = 1000
) -> list[knowledge.DocumentRecord]:
    return knowledge.list_documents(b, scopes=browse_scopes(caller, scope), limit=limit)


@router.get("/documents/{doc_id}", response_model=knowledge.DocumentRecord, summary="One document's current version")
def get_document(doc_id: str, caller: OperatorDep, b: BackendsDep) -> knowledge.DocumentRecord:
    return knowledge.get_document(b, doc_id, scopes=id_scopes(caller))


@router.delete(
    "/documents/{doc_id}",
    summary="Remove a document from the index",
    description="404 for a document outside the caller's scopes; a shared document needs a caller who may publish "
    "shared ones.",
)
def delete_document(doc_id: str, caller: OperatorDep, b: BackendsDep) -> dict[str, int | str]:
    scopes = id_scopes(caller)
    owner = knowledge.owner_scope(b, doc_id)
    if owner is not None and (scopes is None or owner in scopes) and not may_manage(caller, owner):
        raise Forbidden(f"document {doc_id} is shared; removing it needs a key that may publish shared documents")
    return {"id": doc_id, "chunks_removed": knowledge.delete_document(b, doc_id, scopes=scopes)}


@router.get(
    "/search",
    response_model=list[SearchHit],
    summary="Query the knowledge index",
    description="Searches the caller's tenant's documents and the shared ones; `?scope=` narrows to one of them "
    "(an admin may name any scope).",
    responses=problem_responses(403),
)
def search(
    caller: CallerDep,
    b: BackendsDep,
    q: Annotated[str, Query(min_length=1, max_length=1000)],
    top: Annotated[int, Query(ge=1, le=50)] = 5,
    doc_id: str | None = None,
    scope: ScopeQuery = None,
) -> list[SearchHit]:
    return b.index.search(q, top=top, doc_id=doc_id, scopes=browse_scopes(caller, scope))


@router.get(
    "/documents/{doc_id}/chunks/{chunk_id}",
    response_model=Chunk,
    summary="One indexed chunk",
    description="The exact text citations quote from (`quote == content[start:end]`), so a caller can check them.",
)
def get_chunk(doc_id: str, chunk_id: ChunkNumber, caller: CallerDep, b: BackendsDep) -> Chunk:
    return knowledge.chunk(b, doc_id, chunk_id, scopes=id_scopes(caller))
