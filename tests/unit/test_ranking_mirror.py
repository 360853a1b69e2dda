"""The ranking mirror's bulk build: FTS5's bm25() per term and row, whatever the vocabulary's size."""

from __future__ import annotations

import math

import pytest

from shared.adapters.local.ranking import K1, B, RankingMirror
from shared.text import terms, tokenize


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


@pytest.mark.parametrize("vocabulary", [50, 70_000])  # below and above 16-bit term ids
def test_the_bulk_build_scores_every_row_as_counted_token_by_token(vocabulary: int) -> None:
    rows = []
    for n in range(400):
        own = " ".join(f"w{(n * 179 + k) % vocabulary}" for k in range(n % 7 + 1))
        scope = "acme" if n % 2 else "shared"
        rows.append((n * 3 + 1, f"doc{n // 10}", scope, f"common {own}", f"{own} common w{n % 5}"))
    mirror = RankingMirror(rows, 0, 2.0, 1.0)
    for term in ("common", "w1", "w3", f"w{(7 * 179) % vocabulary}"):
        expected = reference_scores(rows, term)
        got = dict(mirror.top([term], len(rows)))
        assert got == pytest.approx(expected)
        assert len(got) == len(expected) > 0


def test_an_empty_mirror_ranks_nothing() -> None:
    assert RankingMirror([], 0, 2.0, 1.0).top(["anything"], 5) == []


@pytest.mark.parametrize(
    "text",
    [
        "How are dead-lettered messages handled? Backups, stories and 3s buses.",
        "バックアップの復元手順は？ データ・ベースの設定をしてください。",
        "Ünïcödé ＡＢＣ１２３ Straße ﾃｽﾄ ㌔ snake_case \u3000全角\u3000スペース ゛゜",
        "",
    ],
)
def test_ingest_terms_are_the_query_tokens(text: str) -> None:
    assert terms(text) == " ".join(tokenize(text))
