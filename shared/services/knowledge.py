"""The knowledge service: uploads into documents, documents into chunks, chunks into the index.

Citations quote chunk text verbatim and are verified against it, so a chunk is always an exact
substring of its document's content: chunking chooses boundaries, it never rewrites text.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import PureWindowsPath

from pydantic import BaseModel

from shared.contracts import Chunk, Document, valid_doc_id
from shared.engine.backends import Backends
from shared.errors import NotFound
from shared.text import split_sentences

_HEADING_RE = re.compile(r"#{1,6}\s")
_FENCE_RE = re.compile(r"^[ \t]{0,3}(?:```|~~~)", re.MULTILINE)
_TITLE_RE = re.compile(r"^[ \t]{0,3}#[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_NOT_DOC_ID_RE = re.compile(r"[^A-Za-z0-9_\-=]+")


def _pieces(content: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """Cut one over-long sentence into spans of at most max_chars, at a space when there is one late enough."""
    pieces: list[tuple[int, int]] = []
    while end - start > max_chars:
        cut = start + max_chars
        space = content.rfind(" ", start + max_chars // 2, cut)
        if space > start:
            cut = space
            while content[cut - 1].isspace():  # a chunk never ends in whitespace
                cut -= 1
        pieces.append((start, cut))
        start = cut
        while start < end and content[start].isspace():
            start += 1
    if end > start:
        pieces.append((start, end))
    return pieces


def _fenced_ranges(content: str) -> list[tuple[int, int]]:
    """Character ranges of fenced code blocks, where '# ' starts a shell comment, not a heading."""
    ranges: list[tuple[int, int]] = []
    opened: int | None = None
    for match in _FENCE_RE.finditer(content):
        if opened is None:
            opened = match.start()
        else:
            ranges.append((opened, match.end()))
            opened = None
    if opened is not None:
        ranges.append((opened, len(content)))
    return ranges


def _is_heading(content: str, start: int, fenced: list[tuple[int, int]]) -> bool:
    return bool(_HEADING_RE.match(content, start)) and not any(a <= start < b for a, b in fenced)


def chunk_document(doc: Document, max_chars: int = 800) -> list[Chunk]:
    """Sentence-aware chunks of at most max_chars; when a chunk must end, it ends before a heading if it can."""
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    content = doc.content
    fenced = _fenced_ranges(content)
    # Each piece carries how good a chunk boundary before it is: 2 before a heading (but not
    # between a heading and its subheading), 1 at a paragraph break, 0 between sentences.
    pieces: list[tuple[int, int, int]] = []
    prev_end, prev_heading = 0, False
    for start, end in split_sentences(content):
        heading = _is_heading(content, start, fenced)
        if heading and not prev_heading:
            preference = 2
        else:
            preference = 1 if content.count("\n", prev_end, start) >= 2 else 0
        for n, (piece_start, piece_end) in enumerate(_pieces(content, start, end, max_chars)):
            pieces.append((piece_start, piece_end, preference if n == 0 else 0))
        prev_end, prev_heading = end, heading

    spans: list[tuple[int, int]] = []
    current: list[tuple[int, int, int]] = []
    for piece in pieces:
        if current and piece[1] - current[0][0] > max_chars:
            # Back up to the best boundary that still leaves a chunk worth reading (a quarter full).
            cut, best = len(current), 0
            for i in range(1, len(current)):
                kept = current[i - 1][1] - current[0][0]
                if kept >= max_chars // 4 and current[i][2] >= max(best, 1):
                    best, cut = current[i][2], i  # the best kind of boundary, the latest of that kind
            spans.append((current[0][0], current[cut - 1][1]))
            current = current[cut:]
            if current and piece[1] - current[0][0] > max_chars:
                spans.append((current[0][0], current[-1][1]))
                current = []
        current.append(piece)
    if current:
        spans.append((current[0][0], current[-1][1]))
    return [
        Chunk(doc_id=doc.id, chunk_id=n, title=doc.title, url=doc.url, content=content[start:end])
        for n, (start, end) in enumerate(spans)
    ]


def _doc_id_from_stem(stem: str) -> str:
    """The stem in the DOC_ID alphabet; a short hash keeps non-ASCII names ("運用手順書") distinct."""
    folded = unicodedata.normalize("NFKC", stem)
    ascii_id = _NOT_DOC_ID_RE.sub("-", folded).strip("-")
    dropped_non_ascii = any(ord(ch) > 127 for ch in folded)
    if not ascii_id or dropped_non_ascii:
        digest = hashlib.sha1(stem.encode("utf-8")).hexdigest()[:8]
        ascii_id = f"{ascii_id[:90]}-{digest}" if ascii_id else f"doc-{digest}"
    return ascii_id[:100]


def parse_upload(filename: str, text: str) -> Document:
    """A Markdown or text upload as a Document: id from the file name, title from the first '# ' heading."""
    stem = PureWindowsPath(filename).stem.strip() or "document"  # handles both '/' and '\\' paths
    content = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if not content.strip():
        raise ValueError(f"upload {filename!r} has no text to index")
    heading = _TITLE_RE.search(content)
    title = heading.group(1).strip() if heading else stem
    return Document(id=_doc_id_from_stem(stem), title=title[:500], content=content)


class IndexedDocument(BaseModel):
    id: str
    chunks: int


class DocumentNotFound(NotFound):
    fix = "check the document id (GET /api/search shows what is indexed)"


def index_documents(b: Backends, documents: list[Document]) -> list[IndexedDocument]:
    """Chunk and index each document, replacing any earlier version of it."""
    out = []
    for doc in documents:
        chunks = chunk_document(doc, b.settings.chunk_chars)
        b.index.delete_document(doc.id)  # a re-upload may have fewer chunks than before
        b.index.upsert(chunks)
        out.append(IndexedDocument(id=doc.id, chunks=len(chunks)))
    return out


def delete_document(b: Backends, doc_id: str) -> int:
    """Remove a document's chunks; DocumentNotFound when there were none."""
    removed = b.index.delete_document(doc_id) if valid_doc_id(doc_id) else 0
    if not removed:
        raise DocumentNotFound(f"no document {doc_id}")
    return removed


def chunk(b: Backends, doc_id: str, chunk_id: int) -> Chunk:
    """One indexed chunk; DocumentNotFound if the index holds no such chunk."""
    found = b.index.get_chunks(doc_id, chunk_id) if valid_doc_id(doc_id) else []
    if not found:
        raise DocumentNotFound(f"no chunk {chunk_id} of document {doc_id}")
    return found[0]
