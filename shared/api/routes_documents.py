"""/api/documents and /api/search: feed the knowledge index and check what it retrieves."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, UploadFile
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from shared.api.deps import BackendsDep
from shared.api.problems import validation_error
from shared.api.security import CallerDep, OperatorDep
from shared.contracts import Chunk, Document, SearchHit
from shared.errors import InvalidRequest, UnsupportedMediaType
from shared.services import knowledge

router = APIRouter(prefix="/api", tags=["knowledge"])
_documents = TypeAdapter(Document | list[Document])


class IndexResult(BaseModel):
    indexed: list[knowledge.IndexedDocument]


@router.post(
    "/documents",
    status_code=201,
    response_model=IndexResult,
    summary="Chunk and index documents",
    description="JSON: one document or a list of `{id, title, url?, content}`. Or a Markdown/text upload: "
    "multipart `file` field(s), or a `text/markdown` / `text/plain` body with `?filename=`.",
)
async def add_documents(
    request: Request, caller: OperatorDep, b: BackendsDep, filename: Annotated[str | None, Query(max_length=200)] = None
) -> IndexResult:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            parsed = _documents.validate_json(await request.body())
        except ValidationError as exc:
            raise validation_error(list(exc.errors())) from None
        docs = parsed if isinstance(parsed, list) else [parsed]
    elif ctype == "multipart/form-data":
        form = await request.form()
        docs = [
            _parse_upload(f.filename or "upload.md", (await f.read()).decode("utf-8", errors="replace"))
            for f in form.getlist("file")
            if isinstance(f, UploadFile)
        ]
    elif ctype in ("text/markdown", "text/plain"):
        if not filename:
            raise InvalidRequest("a text upload needs ?filename= (its stem becomes the document id)")
        docs = [_parse_upload(filename, (await request.body()).decode("utf-8", errors="replace"))]
    else:
        raise UnsupportedMediaType("send application/json, multipart/form-data, text/markdown or text/plain")
    if not docs:
        raise InvalidRequest("no documents in the request")
    # Chunking and indexing are CPU and disk work: off the event loop, so other requests keep flowing.
    return IndexResult(indexed=await run_in_threadpool(knowledge.index_documents, b, docs))


def _parse_upload(filename: str, text: str) -> Document:
    try:
        return knowledge.parse_upload(filename, text)
    except ValueError as exc:  # e.g. an empty file: the caller's mistake, named
        raise InvalidRequest(str(exc)) from None


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
