"""Chunks follow structure: each keeps its heading and page, overlaps stay whole sentences, the bound holds."""

from __future__ import annotations

import pytest

from shared.contracts import Document
from shared.services.chunking import chunk_document
from shared.services.extraction import Section, extract
from shared.text import split_sentences
from tests.fixtures.documents import pdf
from tests.unit.test_chunking_text import long_english


def test_each_chunk_carries_the_heading_it_sits_under() -> None:
    content = long_english(12)
    chunks = chunk_document(Document(id="d", title="T", content=content), max_chars=300, version="v1")
    assert all(c.version == "v1" for c in chunks)
    for chunk in chunks:
        start = content.index(chunk.content)
        before = [line for line in content[: start + 1].splitlines() if line.startswith("#")]
        expected = before[-1].lstrip("#").strip() if before else None
        if chunk.content.startswith("#"):
            expected = chunk.content.splitlines()[0].lstrip("#").strip()
        assert chunk.section == expected


@pytest.mark.parametrize("max_chars", [200, 400, 800])
def test_overlap_repeats_whole_sentences_within_the_bound(max_chars: int) -> None:
    content = long_english(20, most_sentences=14)
    overlap = max(max_chars // 8, 60)
    chunks = chunk_document(Document(id="d", title="T", content=content), max_chars=max_chars, overlap_chars=overlap)
    spans = [(content.index(c.content), content.index(c.content) + len(c.content)) for c in chunks]
    assert all(len(c.content) <= max_chars for c in chunks)
    starts = {start for start, _ in split_sentences(content)}
    overlapped = 0
    for (start, _), (_, prev_end) in zip(spans[1:], spans[:-1], strict=True):
        assert start in starts, "a chunk starts at a sentence start, overlap or not"
        if start < prev_end:
            overlapped += 1
            assert prev_end - start <= overlap
            assert not content[start:prev_end].lstrip().startswith("#"), "a heading is never repeated"
    assert overlapped > 0
    # Coverage: every sentence still sits whole in some chunk.
    for a, b in split_sentences(content):
        if b - a <= max_chars - overlap:
            assert any(content[a:b] in c.content for c in chunks)


def test_overlap_never_crosses_a_heading() -> None:
    content = "# A\n\n" + "Alpha one is here. " * 12 + "\n\n# B\n\n" + "Beta two is here. " * 12
    chunks = chunk_document(Document(id="d", title="T", content=content), max_chars=120, overlap_chars=40)
    for chunk in chunks:
        assert not ("Alpha" in chunk.content and "Beta" in chunk.content)
        assert chunk.section == ("A" if "Alpha" in chunk.content else "B")


def test_pdf_chunks_know_their_page() -> None:
    pages = [[f"Page {n} says the restore step {n} matters. " * 8] for n in range(1, 5)]
    extracted = extract("guide.pdf", pdf(pages))
    doc = Document(id="g", title="Guide", content=extracted.content)
    chunks = chunk_document(doc, max_chars=300, sections=extracted.sections)
    assert {c.page for c in chunks} == {1, 2, 3, 4}
    for chunk in chunks:
        assert f"Page {chunk.page} says" in chunk.content


def test_sections_given_override_markdown_headings() -> None:
    content = "first part of the text.\n\nsecond part of the text."
    sections = (Section(0, heading="Intro", page=1), Section(content.index("second"), heading="Body", page=2))
    chunks = chunk_document(Document(id="d", title="T", content=content), max_chars=30, sections=sections)
    assert [(c.section, c.page) for c in chunks] == [("Intro", 1), ("Body", 2)]
