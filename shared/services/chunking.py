"""Documents into chunks: structure first (headings, pages, paragraphs), sentences never split when they fit.

Citations quote chunk text verbatim and are verified against it, so a chunk is always an exact
substring of its document's content: chunking chooses boundaries, it never rewrites text. An
overlap repeats the last whole sentence(s) of the previous chunk of the same section, so a
sentence that spans a boundary in meaning still reads whole in one chunk.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Sequence

from shared.contracts import Chunk, Document
from shared.services.extraction import Section, fenced_ranges, markdown_sections
from shared.text import split_sentences

__all__ = ["chunk_document"]

_HEADING_RE = re.compile(r"#{1,6}\s")


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


def _is_heading(content: str, start: int, fenced: list[tuple[int, int]]) -> bool:
    return bool(_HEADING_RE.match(content, start)) and not any(a <= start < b for a, b in fenced)


class _Locator:
    """The heading and the page in force at an offset of the content."""

    def __init__(self, sections: Sequence[Section]) -> None:
        ordered = sorted(sections, key=lambda s: s.start)
        self._headings = [(s.start, s.heading) for s in ordered if s.heading is not None]
        self._pages = [(s.start, s.page) for s in ordered if s.page is not None]
        self._heading_starts = [start for start, _ in self._headings]
        self._page_starts = [start for start, _ in self._pages]

    def heading(self, offset: int) -> str | None:
        i = bisect_right(self._heading_starts, offset) - 1
        return self._headings[i][1] if i >= 0 else None

    def page(self, offset: int) -> int | None:
        i = bisect_right(self._page_starts, offset) - 1
        return self._pages[i][1] if i >= 0 else None


def chunk_document(
    doc: Document,
    max_chars: int = 800,
    *,
    overlap_chars: int = 0,
    sections: Sequence[Section] | None = None,
    version: str | None = None,
) -> list[Chunk]:
    """Sentence-aware chunks of at most max_chars; when a chunk must end, it ends before a heading if it can.

    overlap_chars > 0 starts each chunk with the previous chunk's last whole sentences (at most
    that many characters, never across a heading); chunks are packed to max_chars - overlap_chars
    so the bound holds with the overlap. sections (from extraction; Markdown headings when absent)
    give each chunk its heading and page.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    overlap_chars = max(0, min(overlap_chars, max_chars // 2))
    budget = max_chars - overlap_chars
    content = doc.content
    fenced = fenced_ranges(content)
    # Each piece carries how good a chunk boundary before it is: 2 before a heading (but not
    # between a heading and its subheading), 1 at a paragraph break, 0 between sentences.
    pieces: list[tuple[int, int, int]] = []
    headings: list[bool] = []
    prev_end, prev_heading = 0, False
    for start, end in split_sentences(content):
        heading = _is_heading(content, start, fenced)
        if heading and not prev_heading:
            preference = 2
        else:
            preference = 1 if content.count("\n", prev_end, start) >= 2 else 0
        for n, (piece_start, piece_end) in enumerate(_pieces(content, start, end, budget)):
            pieces.append((piece_start, piece_end, preference if n == 0 else 0))
            headings.append(heading and n == 0)
        prev_end, prev_heading = end, heading

    # Spans as ranges of piece indexes [first, last).
    spans: list[tuple[int, int]] = []
    first = 0
    for i in range(len(pieces)):
        if i > first and pieces[i][1] - pieces[first][0] > budget:
            # Back up to the best boundary that still leaves a chunk worth reading (a quarter full).
            cut, best = i, 0
            for j in range(first + 1, i):
                kept = pieces[j - 1][1] - pieces[first][0]
                if kept >= budget // 4 and pieces[j][2] >= max(best, 1):
                    best, cut = pieces[j][2], j  # the best kind of boundary, the latest of that kind
            spans.append((first, cut))
            first = cut
            if first < i and pieces[i][1] - pieces[first][0] > budget:
                spans.append((first, i))
                first = i
    if first < len(pieces):
        spans.append((first, len(pieces)))

    locate = _Locator(sections if sections is not None else markdown_sections(content))
    chunks: list[Chunk] = []
    for n, (lo, hi) in enumerate(spans):
        origin = start = pieces[lo][0]
        end = pieces[hi - 1][1]
        heading_at = locate.heading(start)
        back = lo
        # Overlap: whole sentences just before the chunk, same section, not a heading, within the allowance.
        while (
            overlap_chars
            and back > 0
            and pieces[back][2] < 2
            and not headings[back - 1]
            and end - pieces[back - 1][0] <= max_chars
            and origin - pieces[back - 1][0] <= overlap_chars
            and locate.heading(pieces[back - 1][0]) == heading_at
        ):
            back -= 1
            start = pieces[back][0]
        chunks.append(
            Chunk(
                doc_id=doc.id,
                chunk_id=n,
                title=doc.title,
                url=doc.url,
                content=content[start:end],
                section=heading_at,
                page=locate.page(start),
                version=version,
            )
        )
    return chunks
