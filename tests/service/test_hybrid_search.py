"""SEARCH_MODE=hybrid: BM25 and all-MiniLM-L6-v2 vectors fused by RRF, over the real embedded index."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.adapters.local.search import LocalKnowledgeIndex
from shared.contracts import Chunk
from shared.engine.backends import Backends
from shared.services import knowledge
from tests.fixtures.hybrid import needs_hybrid

pytestmark = needs_hybrid

# The retention passage shares no word with QUESTION: BM25 cannot find it, a sentence vector can.
QUESTION = "How long do we keep snapshots?"
RETENTION = Chunk(
    doc_id="retention",
    chunk_id=0,
    title="Data protection",
    content="Backup copies are retained for thirty days; older ones are deleted automatically every night.",
)
DISTRACTORS = [
    Chunk(doc_id="queue", chunk_id=0, title="Queue", content="A long queue means workers are slow; scale them out."),
    Chunk(doc_id="keys", chunk_id=0, title="API keys", content="We rotate keys monthly and keep the old one a week."),
    Chunk(doc_id="costs", chunk_id=0, title="Budgets", content="A tenant over its monthly token budget is paused."),
]


def hybrid_index(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    from shared.adapters.local.embeddings import load_encoder
    from shared.adapters.local.hybrid import HybridKnowledgeIndex

    index = HybridKnowledgeIndex(
        LocalKnowledgeIndex(tmp_path / "search.sqlite3"), tmp_path / "vectors.sqlite3", load_encoder().encode
    )
    yield index
    index.close()


hybrid = pytest.fixture(hybrid_index)


def test_hybrid_finds_a_paraphrase_bm25_misses(hybrid) -> None:  # type: ignore[no-untyped-def]
    hybrid.upsert([RETENTION, *DISTRACTORS])
    assert "retention" not in [h.doc_id for h in hybrid.inner.search(QUESTION, top=5)]
    hits = hybrid.search(QUESTION, top=3)
    found = [h for h in hits if h.doc_id == "retention"]  # RRF: rank 1 by vector alone, behind chunks both lists hold
    assert found and found[0].snippet and found[0].title == "Data protection"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_doc_id_filter_holds_on_the_vector_side(hybrid) -> None:  # type: ignore[no-untyped-def]
    hybrid.upsert([RETENTION, *DISTRACTORS])
    hits = hybrid.search(QUESTION, top=5, doc_id="keys")
    assert {h.doc_id for h in hits} == {"keys"}
    assert hybrid.search(QUESTION, top=5, doc_id="nothing-here") == []


@pytest.mark.skipif("scope" not in Chunk.model_fields, reason="Chunk.scope arrives with the tenant-scopes branch")
def test_scopes_filter_holds_on_both_sides(hybrid) -> None:  # type: ignore[no-untyped-def]
    other_tenant = RETENTION.model_copy(update={"doc_id": "retention-acme", "scope": "acme"})
    hybrid.upsert([other_tenant, *DISTRACTORS])
    assert [h.doc_id for h in hybrid.search(QUESTION, top=5, scopes=["acme"])] == ["retention-acme"]
    assert "retention-acme" not in [h.doc_id for h in hybrid.search(QUESTION, top=5, scopes=["globex", "shared"])]
    assert hybrid.get_chunks("retention-acme", scopes=["globex"]) == []


def test_delete_and_replace_leave_no_stale_vector(hybrid) -> None:  # type: ignore[no-untyped-def]
    hybrid.upsert([RETENTION, *DISTRACTORS])
    assert hybrid.vector_count() == 4
    assert hybrid.delete_document("retention") == 1
    assert hybrid.vector_count() == 3
    assert "retention" not in [h.doc_id for h in hybrid.search(QUESTION, top=5)]

    hybrid.replace_document("queue", [DISTRACTORS[0], DISTRACTORS[0].model_copy(update={"chunk_id": 1})])
    hybrid.replace_document("queue", [DISTRACTORS[0]])
    assert hybrid.vector_count() == 3 == hybrid.count()
    hybrid.reset()
    assert hybrid.vector_count() == 0 and hybrid.search(QUESTION) == []


def test_japanese_queries_rank_by_bm25_alone(hybrid) -> None:  # type: ignore[no-untyped-def]
    ja = Chunk(doc_id="ja", chunk_id=0, title="バックアップ", content="バックアップは三十日間保管されます。")
    hybrid.upsert([RETENTION, ja])
    query = "バックアップの保管期間は？"
    assert [h.model_dump() for h in hybrid.search(query, top=5)] == [
        h.model_dump() for h in hybrid.inner.search(query, top=5)
    ]


def test_backfill_embeds_an_index_written_in_bm25_mode(tmp_path: Path) -> None:
    bm25 = LocalKnowledgeIndex(tmp_path / "search.sqlite3")
    bm25.upsert([RETENTION, *DISTRACTORS])
    bm25.close()
    for index in hybrid_index(tmp_path):
        assert index.needs_backfill() and "retention" not in [h.doc_id for h in index.search(QUESTION, top=3)]
        assert index.backfill() == 4
        assert not index.needs_backfill() and "retention" in [h.doc_id for h in index.search(QUESTION, top=3)]
        assert index.backfill() == 0


@pytest.fixture
def hybrid_env(app_env: dict[str, str]) -> dict[str, str]:
    app_env["SEARCH_MODE"] = "hybrid"
    return app_env


def test_search_mode_hybrid_is_wired_through_ingestion(hybrid_env: dict[str, str], backends: Backends) -> None:
    from shared.adapters.local.hybrid import HybridKnowledgeIndex

    assert isinstance(backends.index, HybridKnowledgeIndex)
    knowledge.ingest(backends, [("protection.md", b"# Data protection\n\n" + RETENTION.content.encode())])
    assert backends.index.vector_count() == backends.index.count() == 1
    assert backends.index.search(QUESTION, top=1)[0].title == "Data protection"  # found by its vector alone
