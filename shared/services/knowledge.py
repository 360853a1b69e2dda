"""The knowledge service: files into documents, documents into versions, versions into the index.

A document's id is chosen by the caller or derived from its full name and scope, so `t.html`
and `t.pdf` are two documents while two uploads of `guide.pdf` into one scope are two versions
of one. A version is the hash of what would be indexed: re-ingesting it does nothing; a new one
replaces the chunks through `KnowledgeIndex.replace_document` (one transaction in the embedded
index). The document record (`documents/{doc_id}.json`) is written after the index, so a crash
between the two is healed by the next ingest of the same file, which finds the record stale
and swaps the same chunks in again.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PureWindowsPath
from typing import Literal

from pydantic import BaseModel, Field

from shared.contracts import Chunk, Document, utcnow, valid_doc_id
from shared.engine.backends import Backends
from shared.engine.layout import DOCUMENTS, document_key
from shared.engine.updates import update_json
from shared.errors import InvalidRequest, NotFound, ServiceError
from shared.services.chunking import chunk_document
from shared.services.extraction import Section, extract, markdown_sections

__all__ = [
    "DocumentNotFound",
    "DocumentRecord",
    "IndexedDocument",
    "SourceDocument",
    "chunk_document",
    "delete_document",
    "document_id",
    "get_document",
    "index_documents",
    "ingest",
    "list_documents",
    "parse_upload",
    "read_files",
    "read_upload",
    "version_of",
]

_NOT_DOC_ID_RE = re.compile(r"[^A-Za-z0-9_\-=]+")
IngestStatus = Literal["added", "updated", "unchanged", "refused"]


class DocumentNotFound(NotFound):
    fix = "check the document id (`agentctl docs list`, GET /api/documents)"


@dataclass(frozen=True)
class SourceDocument:
    """A document ready to chunk: its text, where its headings and pages begin, and where it came from."""

    document: Document
    sections: tuple[Section, ...] = field(default_factory=tuple)
    kind: str = "json"
    name: str | None = None
    scope: str | None = None
    size: int = 0
    source_hash: str | None = None


class DocumentRecord(BaseModel):
    """What the knowledge base holds of one document: its current version and how it got there."""

    id: str
    title: str
    name: str | None = Field(None, description="The file name (or path) it was ingested from.")
    scope: str | None = None
    kind: str = Field("json", description="pdf, html, docx, markdown, text or json.")
    url: str | None = None
    version: str = Field(description="Content hash of the indexed version.")
    chunks: int
    bytes: int = 0
    source_hash: str | None = Field(
        None, description="sha256 of the file's bytes (16 hex): lets a re-ingest skip extraction."
    )
    pages: int | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    previous_versions: list[str] = Field(
        default_factory=list, description="Earlier versions, newest last (at most 20)."
    )


class IndexedDocument(BaseModel):
    """What ingesting one document did."""

    id: str
    chunks: int
    status: IngestStatus = "added"
    version: str | None = None
    name: str | None = None
    reason: str | None = Field(None, description="Why it was refused.")


def document_id(name: str, scope: str | None = None) -> str:
    """A stable, collision-free id from a file's full name (and scope): readable part + hash of the exact name.

    'guide.pdf' -> 'guide-pdf-1a2b3c4d'. The hash covers scope and the name as given, so names
    that fold to the same readable part ('t.html', 't-html') stay distinct.
    """
    path = name.replace("\\", "/").strip().strip("/")
    folded = unicodedata.normalize("NFKC", path)
    readable = _NOT_DOC_ID_RE.sub("-", folded).strip("-")[:80] or "doc"
    digest = hashlib.sha256(f"{scope or ''}\x00{path}".encode()).hexdigest()[:10]
    return f"{readable}-{digest}"


def version_of(doc: Document) -> str:
    """The content hash of what gets indexed (title, url, text): equal hashes mean an unchanged document."""
    h = hashlib.sha256()
    for part in (doc.title, doc.url or "", doc.content):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def read_upload(
    name: str,
    data: bytes,
    *,
    doc_id: str | None = None,
    scope: str | None = None,
    url: str | None = None,
    title: str | None = None,
    declared: str | None = None,
) -> SourceDocument:
    """An uploaded file as a SourceDocument; UnsupportedDocument (415) or NoTextFound (422) when it has no text."""
    if doc_id is not None and not valid_doc_id(doc_id):
        raise InvalidRequest(f"doc_id {doc_id!r} must be 1-100 letters, digits, '_', '-' or '='")
    extracted = extract(name, data, declared=declared)
    stem = PureWindowsPath(name).stem.strip() or "document"
    document = Document(
        id=doc_id or document_id(name, scope),
        title=(title or extracted.title or stem)[:500],
        url=url,
        content=extracted.content,
    )
    return SourceDocument(document, extracted.sections, extracted.kind, name, scope, len(data), bytes_hash(data))


def bytes_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def parse_upload(filename: str, text: str | bytes) -> Document:
    """A file as a Document (id from its full name, title from the file): read_upload without the structure."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return read_upload(filename, data).document


def _source(doc: Document | SourceDocument, scope: str | None = None) -> SourceDocument:
    if isinstance(doc, SourceDocument):
        return doc
    return SourceDocument(doc, tuple(markdown_sections(doc.content)), "json", None, scope, len(doc.content))


def ingest_one(b: Backends, source: SourceDocument) -> IndexedDocument:
    """Index one document version, unless it is the version already indexed. Idempotent: safe to redo."""
    doc = source.document
    version = version_of(doc)
    record = get_record(b, doc.id)
    if record is not None and record.version == version:
        head = b.index.get_chunks(doc.id, 0)
        if head and head[0].version == version:
            return IndexedDocument(
                id=doc.id, chunks=record.chunks, status="unchanged", version=version, name=source.name
            )
    chunks = chunk_document(
        doc,
        b.settings.chunk_chars,
        overlap_chars=b.settings.chunk_overlap_chars,
        sections=source.sections,
        version=version,
    )
    b.index.replace_document(doc.id, chunks)
    pages = max((s.page for s in source.sections if s.page is not None), default=None)

    def change(current: DocumentRecord | None) -> DocumentRecord:
        history = list(current.previous_versions) if current else []
        if current is not None and current.version != version:
            history = (history + [current.version])[-20:]
        return DocumentRecord(
            id=doc.id,
            title=doc.title,
            name=source.name or (current.name if current else None),
            scope=source.scope if source.scope is not None else (current.scope if current else None),
            kind=source.kind,
            url=doc.url,
            version=version,
            chunks=len(chunks),
            bytes=source.size,
            source_hash=source.source_hash,
            pages=pages,
            created_at=current.created_at if current else utcnow(),
            previous_versions=history,
        )

    update_json(
        b.objects,
        document_key(doc.id),
        change,
        load=DocumentRecord.model_validate_json,
        dump=lambda r: r.model_dump_json().encode(),
    )
    status: IngestStatus = "updated" if record is not None else "added"
    return IndexedDocument(id=doc.id, chunks=len(chunks), status=status, version=version, name=source.name)


def index_documents(
    b: Backends, documents: Iterable[Document | SourceDocument], *, scope: str | None = None
) -> list[IndexedDocument]:
    """Ingest each document: added, updated (its chunks swapped for the new version's) or unchanged.

    scope is the scope of plain Documents; a SourceDocument carries its own.
    """
    return [ingest_one(b, _source(doc, scope)) for doc in documents]


def refused(name: str, error: ServiceError) -> IndexedDocument:
    """The outcome of a file that could not be read, with the reason."""
    return IndexedDocument(id="", chunks=0, status="refused", name=name, reason=str(error))


def read_files(
    files: Iterable[tuple[str, bytes]], *, scope: str | None = None
) -> tuple[list[SourceDocument], list[tuple[str, ServiceError]]]:
    """Read files (name, bytes) into documents; the ones that cannot be read come back with their error."""
    sources: list[SourceDocument] = []
    errors: list[tuple[str, ServiceError]] = []
    for name, data in files:
        try:
            sources.append(read_upload(name, data, scope=scope))
        except ServiceError as exc:
            errors.append((name, exc))
    return sources, errors


def ingest(b: Backends, files: Iterable[tuple[str, bytes]], *, scope: str | None = None) -> list[IndexedDocument]:
    """Read and ingest files (name, bytes); a file that cannot be read is refused with its reason, the rest go on."""
    out = []
    for name, data in files:
        same = _unchanged_file(b, name, data, scope)
        if same is not None:
            out.append(same)
            continue
        try:
            source = read_upload(name, data, scope=scope)
        except ServiceError as exc:
            out.append(refused(name, exc))
            continue
        out.append(ingest_one(b, source))
    return out


def _unchanged_file(b: Backends, name: str, data: bytes, scope: str | None) -> IndexedDocument | None:
    """The file's outcome when these very bytes are what its document holds now: no extraction needed."""
    doc_id = document_id(name, scope)
    record = get_record(b, doc_id)
    if record is None or record.source_hash != bytes_hash(data):
        return None
    head = b.index.get_chunks(doc_id, 0)
    if not head or head[0].version != record.version:
        return None  # the index lost or never got this version: ingest it again
    return IndexedDocument(id=doc_id, chunks=record.chunks, status="unchanged", version=record.version, name=name)


def get_record(b: Backends, doc_id: str) -> DocumentRecord | None:
    found = b.objects.get(document_key(doc_id)) if valid_doc_id(doc_id) else None
    return DocumentRecord.model_validate_json(found.data) if found is not None else None


def get_document(b: Backends, doc_id: str) -> DocumentRecord:
    """The document's record; DocumentNotFound when it was never ingested (or was deleted)."""
    record = get_record(b, doc_id)
    if record is None:
        raise DocumentNotFound(f"no document {doc_id}")
    return record


def list_documents(b: Backends, *, scope: str | None = None, limit: int = 1000) -> list[DocumentRecord]:
    """Document records in id order (scope narrows them), at most limit."""
    out: list[DocumentRecord] = []
    for key in b.objects.list(f"{DOCUMENTS.name}/"):
        found = b.objects.get(key)
        if found is None:
            continue  # deleted between list and get
        record = DocumentRecord.model_validate_json(found.data)
        if scope is None or record.scope == scope:
            out.append(record)
            if len(out) >= limit:
                break
    return out


def delete_document(b: Backends, doc_id: str) -> int:
    """Remove a document's chunks and its record; DocumentNotFound when there was neither."""
    if not valid_doc_id(doc_id):
        raise DocumentNotFound(f"no document {doc_id}")
    removed = b.index.delete_document(doc_id)
    had_record = b.objects.delete(document_key(doc_id))
    if not removed and not had_record:
        raise DocumentNotFound(f"no document {doc_id}")
    return removed


def chunk(b: Backends, doc_id: str, chunk_id: int) -> Chunk:
    """One indexed chunk; DocumentNotFound if the index holds no such chunk."""
    found = b.index.get_chunks(doc_id, chunk_id) if valid_doc_id(doc_id) else []
    if not found:
        raise DocumentNotFound(f"no chunk {chunk_id} of document {doc_id}")
    return found[0]
