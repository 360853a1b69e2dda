"""citations.verify and citations.finalize: a citation stands only on text the job really read."""

from __future__ import annotations

from typing import Any

from agents.citations import finalize, verify
from shared.contracts import Chunk
from tests.unit.library import chunk

ENGINE = chunk("engine", 0)
RETRIES = chunk("engine", 1)
BACKUP = chunk("backup", 0)
READ = {c.key: c for c in (ENGINE, RETRIES, BACKUP)}


def cite(n: int, source: Chunk, quote: str) -> dict[str, Any]:
    return {"n": n, "doc_id": source.doc_id, "chunk_id": source.chunk_id, "quote": quote}


def test_a_verbatim_quote_is_verified_at_its_place_in_the_chunk() -> None:
    quote = "A step commits by writing its checkpoint create-only"

    check = verify("Steps commit once [1].", [cite(1, ENGINE, quote)], READ)

    assert check.failed == []
    [citation] = check.citations
    assert citation.quote == quote == ENGINE.content[citation.start : citation.end]
    assert citation.start == ENGINE.content.index(quote)
    assert (citation.doc_id, citation.chunk_id, citation.title, citation.url) == (
        "engine",
        0,
        "The step engine",
        "https://example.com/engine",
    )


def test_a_japanese_quote_is_verified() -> None:
    quote = "復元後は件数とチェックサムを検証します。"

    [citation] = verify("検証します [1]", [cite(1, BACKUP, quote)], READ).citations

    assert BACKUP.content[citation.start : citation.end] == quote


def test_a_reflowed_quote_cites_the_chunks_own_text() -> None:
    # The model joined the chunk's two lines with a space; the citation keeps the chunk's newline.
    reflowed = "reschedule the step with backoff. Permanent errors"

    [citation] = verify("[1]", [cite(1, RETRIES, "  " + reflowed + " ")], READ).citations

    assert citation.quote == "reschedule the step with backoff.\nPermanent errors"
    assert citation.quote == RETRIES.content[citation.start : citation.end]


def test_a_fabricated_quote_is_removed_and_reported() -> None:
    real = "Each step of a job is one queue message."
    made_up = "Each step of a job is retried forever."

    check = verify("Real [1]. Invented [2].", [cite(1, ENGINE, real), cite(2, ENGINE, made_up)], READ)

    assert [c.n for c in check.citations] == [1]
    [failure] = check.failed
    assert failure["n"] == 2
    assert failure["why"] == "quote does not occur in chunk engine--c0000"


def test_a_quote_from_a_chunk_never_read_is_refused_even_if_the_text_is_true() -> None:
    unread = Chunk(doc_id="tides", chunk_id=3, title="Tides", content="Passage 3 about tidal energy.")
    read_only_engine = {ENGINE.key: ENGINE}

    check = verify("[1]", [cite(1, unread, "Passage 3 about tidal energy.")], read_only_engine)

    assert check.citations == []
    assert check.failed[0]["why"] == "chunk tides--c0003 was not read in this job"


def test_a_real_quote_attributed_to_the_wrong_chunk_is_refused() -> None:
    check = verify("[1]", [cite(1, RETRIES, "Each step of a job is one queue message.")], READ)

    assert check.citations == []
    assert check.failed[0]["why"] == "quote does not occur in chunk engine--c0001"


def test_malformed_entries_and_markers_without_entries_fail() -> None:
    proposed: list[dict[str, Any]] = [
        {"doc_id": "engine", "chunk_id": 0, "quote": "Each step"},  # no n
        {"n": 2, "doc_id": "engine", "chunk_id": "first", "quote": "Each step"},
        cite(3, ENGINE, "   "),
    ]

    check = verify("One [2], two [3], four [4].", proposed, READ)

    assert check.citations == []
    whys = [f["why"] for f in check.failed]
    assert whys == [
        "missing or non-numeric n",
        "chunk_id is not a number",
        "quote does not occur in chunk engine--c0000",
        "[4] appears in the text but has no citation entry",
    ]


def test_finalize_drops_unverified_markers_and_renumbers_by_first_use() -> None:
    check = verify(
        "Retries back off [3]. Steps commit once [1]. Invented [2]. Again [3].\n",
        [cite(1, ENGINE, "A step commits"), cite(2, ENGINE, "never happens"), cite(3, RETRIES, "with backoff")],
        READ,
    )

    text, kept = finalize(check.markdown, check.citations)

    assert text == "Retries back off [1]. Steps commit once [2]. Invented . Again [1].\n"
    assert [(c.n, c.quote) for c in kept] == [(1, "with backoff"), (2, "A step commits")]
