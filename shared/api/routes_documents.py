"""/api/documents and /api/search: feed the knowledge index and check what it retrieves."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, TypeAdapter, ValidationError

from shared.api.problems import Problem
from shared.api.security import CallerDep, OperatorDep
from shared.chunking import chunk_document, parse_upload
from shared.composition import Backends, get_backends
from shared.contracts import Document, SearchHit, valid_doc_id

router = APIRouter(prefix="/api", tags=["knowledge"])
_documents = TypeAdapter(Document | list[Document])


class IndexedDocument(BaseModel):
    id: str
    chunks: int


class IndexResult(BaseModel):
    indexed: list[IndexedDocument]


def index_documents(b: Backends, documents: list[Document]) -> list[IndexedDocument]:
    out = []
    for doc in documents:
        chunks = chunk_document(doc, b.settings.chunk_chars)
        b.index.delete_document(doc.id)  # a re-upload may have fewer chunks than before
        b.index.upsert(chunks)
        out.append(IndexedDocument(id=doc.id, chunks=len(chunks)))
    return out


@router.post(
    "/documents", status_code=201, response_model=IndexResult, summary="Chunk and index documents",
    description="JSON: one document or a list of `{id, title, url?, content}`. Or a Markdown/text upload: "
                "multipart `file` field(s), or a `text/markdown` / `text/plain` body with `?filename=`.",
)
async def add_documents(request: Request, caller: OperatorDep,
                        filename: Annotated[str | None, Query(max_length=200)] = None) -> IndexResult:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            parsed = _documents.validate_json(await request.body())
        except ValidationError as exc:
            errors = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
            raise Problem(422, "; ".join(f"{e['field']}: {e['message']}" for e in errors), kind="validation",
                          errors=errors) from None
        docs = parsed if isinstance(parsed, list) else [parsed]
    elif ctype == "multipart/form-data":
        form = await request.form()
        docs = [_parse_upload(f.filename or "upload.md", (await f.read()).decode("utf-8", errors="replace"))
                for f in form.getlist("file") if hasattr(f, "read")]
    elif ctype in ("text/markdown", "text/plain"):
        if not filename:
            raise Problem(422, "a text upload needs ?filename= (its stem becomes the document id)", kind="validation")
        docs = [_parse_upload(filename, (await request.body()).decode("utf-8", errors="replace"))]
    else:
        raise Problem(415, "send application/json, multipart/form-data, text/markdown or text/plain")
    if not docs:
        raise Problem(422, "no documents in the request", kind="validation")
    return IndexResult(indexed=index_documents(get_backends(), docs))


def _parse_upload(filename: str, text: str) -> Document:
    try:
        return parse_upload(filename, text)
    except ValueError as exc:  # e.g. an empty file: the caller's mistake, named
        raise Problem(422, str(exc), kind="validation") from None


@router.delete("/documents/{doc_id}", summary="Remove a document from the index")
def delete_document(doc_id: str, caller: OperatorDep) -> dict[str, int | str]:
    if not valid_doc_id(doc_id):
        raise Problem(404, f"no document {doc_id}")
    removed = get_backends().index.delete_document(doc_id)
    if not removed:
        raise Problem(404, f"no document {doc_id}")
    return {"id": doc_id, "chunks_removed": removed}


@router.get("/search", response_model=list[SearchHit], summary="Query the knowledge index")
def search(caller: CallerDep, q: Annotated[str, Query(min_length=1, max_length=1000)],
           top: Annotated[int, Query(ge=1, le=50)] = 5, doc_id: str | None = None) -> list[SearchHit]:
    return get_backends().index.search(q, top=top, doc_id=doc_id)
