"""/api/documents, /api/ingestions and /api/search: feed the knowledge index and check what it retrieves."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from shared.api.deps import BackendsDep
from shared.api.problems import validation_error
from shared.api.security import CallerDep, OperatorDep
from shared.contracts import Chunk, Document, SearchHit
from shared.engine.backends import Backends
from shared.errors import InvalidRequest
from shared.services import extraction, ingestion, knowledge

router = APIRouter(prefix="/api", tags=["knowledge"])
_documents = TypeAdapter(Document | list[Document])
_document = TypeAdapter(Document)
ScopeQuery = Annotated[str | None, Query(max_length=100, pattern=r"^[A-Za-z0-9_\-]+$")]


class IndexResult(BaseModel):
    indexed: list[knowledge.IndexedDocument]


@router.post(
    "/documents",
    status_code=201,
    response_model=IndexResult,
    responses={202: {"model": ingestion.IngestionJob, "description": "A large upload, queued as an ingestion job"}},
    summary="Ingest documents: PDF, HTML, Word, Markdown, text or JSON",
    description="JSON: one document or a list of `{id, title, url?, content}`. Files: multipart `file` field(s), "
    "or a raw body with `?filename=` (its type is read from the bytes: PDF, DOCX, HTML, Markdown, text). "
    "Each document is `added`, `updated` (its chunks swapped for the new version's), `unchanged`, or `refused` "
    "with the reason. An upload of more than INGEST_SYNC_MAX_FILES files (or JSON documents) or "
    "INGEST_SYNC_MAX_BYTES bytes becomes an ingestion job: 202 with a Location to poll.",
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
            job = await run_in_threadpool(
                lambda: ingestion.submit_ingestion(b, [], documents=docs, scope=scope, idempotency_key=idempotency_key)
            )
            return JSONResponse(
                job.model_dump(mode="json"), status_code=202, headers={"Location": f"/api/ingestions/{job.id}"}
            )
        # Chunking and indexing are CPU and disk work: off the event loop, so other requests keep flowing.
        return IndexResult(indexed=await run_in_threadpool(knowledge.index_documents, b, docs))
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
    b: Backends, files: list[tuple[str, bytes]], doc_id: str | None, scope: str | None, declared: str | None
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
    return ingestion.get_ingestion(b, ingestion_id)


@router.post(
    "/ingestions/{ingestion_id}/retry",
    status_code=202,
    response_model=ingestion.IngestionJob,
    summary="Send an ingestion's dead-lettered batches again",
)
def retry_ingestion(ingestion_id: str, caller: OperatorDep, b: BackendsDep) -> ingestion.IngestionJob:
    return ingestion.retry_failed(b, ingestion_id)


@router.get("/documents", response_model=list[knowledge.DocumentRecord], summary="Documents in the knowledge base")
def list_documents(
    caller: OperatorDep, b: BackendsDep, scope: ScopeQuery = None, limit: Annotated[int, Query(ge=1, le=5000)] = 1000
) -> list[knowledge.DocumentRecord]:
    return knowledge.list_documents(b, scope=scope, limit=limit)


@router.get("/documents/{doc_id}", response_model=knowledge.DocumentRecord, summary="One document's current version")
def get_document(doc_id: str, caller: OperatorDep, b: BackendsDep) -> knowledge.DocumentRecord:
    return knowledge.get_document(b, doc_id)


@router.delete("/documents/{doc_id}", summary="Remove a document from the index")
def delete_document(doc_id: str, caller: OperatorDep, b: BackendsDep) -> dict[str, int | str]:
    return {"id": doc_id, "chunks_removed": knowledge.delete_document(b, doc_id)}


@router.get("/search", response_model=list[SearchHit], summary="Query the knowledge index")
def search(
    caller: CallerDep,
    b: BackendsDep,
    q: Annotated[str, Query(min_length=1, max_length=1000)],
    top: Annotated[int, Query(ge=1, le=50)] = 5,
    doc_id: str | None = None,
) -> list[SearchHit]:
    return b.index.search(q, top=top, doc_id=doc_id)


@router.get(
    "/documents/{doc_id}/chunks/{chunk_id}",
    response_model=Chunk,
    summary="One indexed chunk",
    description="The exact text citations quote from (`quote == content[start:end]`), so a caller can check them.",
)
def get_chunk(doc_id: str, chunk_id: int, caller: CallerDep, b: BackendsDep) -> Chunk:
    return knowledge.chunk(b, doc_id, chunk_id)
