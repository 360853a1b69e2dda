"""The ranking mirror's bulk build: FTS5's bm25() per term and row, whatever the vocabulary's size;
and the term ids ingest packs for it: exactly the query analysis's tokens, tokenize()."""

from __future__ import annotations

import math
import random
import sqlite3

import numpy as np
import pytest

from shared.adapters.local.ranking import K1, B, RankingMirror
from shared.adapters.local.term_ids import ID_TYPE, SCHEMA, Vocabulary, read_vocabulary
from shared.text import tokenize


def reference_scores(rows: list[tuple[int, str, str, str, str]], term: str) -> dict[int, float]:
    """bm25 of one term per rowid, counted token by token (title weight 2, content weight 1)."""
    lengths = {r[0]: len(r[3].split()) + len(r[4].split()) for r in rows}
    avgdl = sum(lengths.values()) / len(rows)
    freqs = {r[0]: 2.0 * r[3].split().count(term) + r[4].split().count(term) for r in rows}
    hits = sum(1 for f in freqs.values() if f)
    idf = max(math.log((len(rows) - hits + 0.5) / (hits + 0.5)), 1e-6)
    return {
        rowid: idf * f * (K1 + 1) / (f + K1 * (1 - B + B * lengths[rowid] / avgdl)) for rowid, f in freqs.items() if f
    }


Row = tuple[int, str, str, str, str]


def packed_rows(rows: list[Row]) -> tuple[list[tuple[int, str, str, bytes, bytes]], list[str]]:
    """The rows with their space-separated terms packed as ids, and the vocabulary of those ids."""
    vocabulary = Vocabulary()
    encode = vocabulary.encode_tokens
    packed = [
        (rowid, doc, scope, encode(title.split()), encode(content.split()))
        for rowid, doc, scope, title, content in rows
    ]
    db = sqlite3.connect(":memory:")
    db.execute(SCHEMA)
    vocabulary.flush(db)
    return packed, read_vocabulary(db)


@pytest.mark.parametrize("vocabulary", [50, 70_000])  # below and above 16-bit term ids
def test_the_bulk_build_scores_every_row_as_counted_token_by_token(vocabulary: int) -> None:
    rows = []
    for n in range(400):
        own = " ".join(f"w{(n * 179 + k) % vocabulary}" for k in range(n % 7 + 1))
        scope = "acme" if n % 2 else "shared"
        rows.append((n * 3 + 1, f"doc{n // 10}", scope, f"common {own}", f"{own} common w{n % 5}"))
    mirror = RankingMirror(*packed_rows(rows), 0, 2.0, 1.0)
    for term in ("common", "w1", "w3", f"w{(7 * 179) % vocabulary}"):
        expected = reference_scores(rows, term)
        got = dict(mirror.top([term], len(rows)))
        assert got == pytest.approx(expected)
        assert len(got) == len(expected) > 0
    assert mirror.top(["absent"], 5) == []


def test_an_empty_mirror_ranks_nothing() -> None:
    assert RankingMirror([], [], 0, 2.0, 1.0).top(["anything"], 5) == []


def vocabulary_file() -> tuple[Vocabulary, sqlite3.Connection]:
    db = sqlite3.connect(":memory:")
    db.execute(SCHEMA)
    return Vocabulary(), db


def decoded(vocabulary: Vocabulary, db: sqlite3.Connection, text: str) -> list[str]:
    """text packed by vocabulary (its new terms written to db), and read back through db's vocabulary."""
    vocabulary.begin(db)
    packed = vocabulary.encode(text)
    vocabulary.flush(db)
    terms = read_vocabulary(db)
    return [terms[i] for i in np.frombuffer(packed, dtype=ID_TYPE).tolist()]


@pytest.mark.parametrize(
    "text",
    [
        "How are dead-lettered messages handled? Backups, stories and 3s buses.",
        "バックアップの復元手順は？ データ・ベースの設定をしてください。",
        "Ünïcödé ＡＢＣ１２３ Straße ﾃｽﾄ ㌔ snake_case \u3000全角\u3000スペース ゛゜",
        "ΟΔΟΣ ΟΔΟΣΣ İstanbul ﬁle ¨x ⑴ ½ Ⅻ ﾊﾟ ｶﾞ",
        "",
    ],
)
def test_ingest_term_ids_are_the_query_tokens(text: str) -> None:
    vocabulary, db = vocabulary_file()
    assert decoded(vocabulary, db, text) == tokenize(text)
    assert decoded(vocabulary, db, text) == tokenize(text)  # again, from the remembered pieces


def test_ingest_term_ids_are_the_query_tokens_on_random_text() -> None:
    """Pieces of every kind tokenize() treats apart: cases, widths, compatibility forms, scripts, whitespace."""
    alphabet = list("aZzΣσςİıßéE09 .,?-_'\t\n\u3000\u00a0\u2002¨´ﬁ⑴½ＡＢ１ｶﾞﾊﾟ゛゜")
    alphabet += list("の は が を に で 復元手順バックアップ々〆ㇰ가한") + [
        "ΟΔΟΣ",
        "ください",
        "Backups",
        "stories",
    ]
    rng = random.Random(12)
    vocabulary, db = vocabulary_file()
    for _ in range(3_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert decoded(vocabulary, db, text) == tokenize(text), repr(text)
