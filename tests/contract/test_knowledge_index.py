"""One KnowledgeIndex contract, run against the embedded SQLite FTS5 index and Azure AI Search.

The agent leans on three properties: a question (English or Japanese) finds the passage that
answers it, any text a user types is safe to search, and export pages every chunk exactly once
in key order (backups and restores are built on it).

Azure AI Search runs when SEARCH_TEST_ENDPOINT and SEARCH_TEST_API_KEY name a real service; each
run creates a throwaway index and deletes it afterwards.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from shared.adapters.azure.search import AzureKnowledgeIndex
from shared.adapters.local.search import LocalKnowledgeIndex
from shared.contracts import Chunk, Document
from shared.ports import KnowledgeIndex
from shared.services.knowledge import chunk_document

T = TypeVar("T")

AZURE_ENDPOINT = os.environ.get("SEARCH_TEST_ENDPOINT")
AZURE_API_KEY = os.environ.get("SEARCH_TEST_API_KEY")
AZURE_SKIP_REASON = "Azure AI Search contract needs SEARCH_TEST_ENDPOINT and SEARCH_TEST_API_KEY"

LIBRARY = [
    Document(
        id="restore-en",
        title="Restoring the knowledge index",
        content=(
            "# Restoring the knowledge index\n\n"
            "To restore the knowledge index from a backup, stop accepting new jobs first. "
            "Download the latest backup, rebuild the index from its chunks, and compare the document count "
            "with the manifest. A mismatch fails the restore."
        ),
    ),
    Document(
        id="alerts-en",
        title="Alerts",
        content=(
            "An alert fires when the dead-letter queue holds messages for more than fifteen minutes. "
            "Another alert fires when a tenant spends eighty percent of its monthly token budget."
        ),
    ),
    Document(
        id="engine-en",
        title="The step engine",
        content=(
            "Each step of a job is one queue message. A step commits by writing its checkpoint "
            "create-only, so a duplicate delivery can never commit the same step twice."
        ),
    ),
    Document(
        id="backup-ja",
        title="バックアップと復元",
        content=(
            "## バックアップと復元\n\n"
            "ナレッジインデックスは毎日バックアップされます。"
            "復元の手順では、選んだバックアップからインデックスを再構築し、件数とチェックサムを検証します。"
            "検証が一致しない場合は復元を失敗として扱います。"
        ),
    ),
    Document(
        id="dlq-ja",
        title="デッドレターキュー",
        content=(
            "ジョブが完了しないときは、まずデッドレターキューの件数を確認します。"
            "一時的な障害であればステップを再投入します。"
        ),
    ),
    Document(
        id="memory-ja",
        title="メモリ不足への対処",
        content=(
            "ワーカーがメモリ不足で落ちる場合は、短期メモリの保持期間を短くし、同時に実行するジョブ数を減らします。"
        ),
    ),
]


def library_chunks() -> list[Chunk]:
    return [chunk for doc in LIBRARY for chunk in chunk_document(doc, max_chars=200)]


def numbered_chunks(doc_id: str, count: int, title: str = "Numbered") -> list[Chunk]:
    return [
        Chunk(doc_id=doc_id, chunk_id=n, title=title, content=f"Passage {n} of {doc_id} about tidal energy.")
        for n in range(count)
    ]


# --- fixtures -------------------------------------------------------------------------------------


class Backend:
    """An index under test and how long its writes take to become visible to reads."""

    def __init__(self, index: KnowledgeIndex, settle_seconds: float) -> None:
        self.index = index
        self.settle_seconds = settle_seconds

    def eventually(self, check: Callable[[], T]) -> T:
        """check()'s result once it stops failing; the embedded index is consistent at once."""
        deadline = time.monotonic() + self.settle_seconds
        while True:
            try:
                return check()
            except AssertionError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def write(self, chunks: list[Chunk]) -> None:
        before = self.index.count()
        self.index.upsert(chunks)
        self.eventually(lambda: _assert_at_least(self.index.count(), before + len({c.key for c in chunks})))


def _assert_at_least(actual: int, expected: int) -> int:
    assert actual >= expected, f"count {actual}, expected at least {expected}"
    return actual


@pytest.fixture(scope="module")
def azure_index() -> Iterator[AzureKnowledgeIndex]:
    if not (AZURE_ENDPOINT and AZURE_API_KEY):
        pytest.skip(AZURE_SKIP_REASON)
    from azure.core.credentials import AzureKeyCredential

    index = AzureKnowledgeIndex(AZURE_ENDPOINT, f"contract-{uuid.uuid4().hex[:12]}", AzureKeyCredential(AZURE_API_KEY))
    index.ensure_index()
    yield index
    index.delete_index()
    index.close()


@pytest.fixture(params=["local", "azure"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "local":
        local = LocalKnowledgeIndex(tmp_path / "search.sqlite3")
        yield Backend(local, settle_seconds=0)
        local.close()
    else:
        azure: AzureKnowledgeIndex = request.getfixturevalue("azure_index")
        azure.reset()
        yield Backend(azure, settle_seconds=30)


# --- the contract ---------------------------------------------------------------------------------


def test_conforms_to_the_port(backend: Backend) -> None:
    assert isinstance(backend.index, KnowledgeIndex)
    backend.index.ping()
    assert backend.index.count() == 0


def test_upsert_then_count_and_read_back_in_chunk_order(backend: Backend) -> None:
    index = backend.index
    chunks = numbered_chunks("tides", 12) + numbered_chunks("winds", 3)
    assert index.upsert(list(reversed(chunks))) == 15
    backend.eventually(lambda: _assert_equal(index.count(), 15))

    tides = index.get_chunks("tides")
    assert [c.chunk_id for c in tides] == list(range(12))
    assert tides[7] == chunks[7]
    assert index.get_chunks("tides", 3) == [chunks[3]]
    assert index.get_chunks("tides", 99) == []
    assert index.get_chunks("no-such-doc") == []


def test_upsert_replaces_by_key(backend: Backend) -> None:
    index = backend.index
    backend.write(numbered_chunks("tides", 2))
    revised = Chunk(doc_id="tides", chunk_id=1, title="Revised", url="https://example.com/tides", content="Kelp.")
    index.upsert([revised])

    backend.eventually(lambda: _assert_equal(index.get_chunks("tides", 1), [revised]))
    assert index.count() == 2
    assert [h.chunk_id for h in index.search("kelp", doc_id="tides")] == [1]


def test_delete_document_removes_only_that_document(backend: Backend) -> None:
    index = backend.index
    backend.write(numbered_chunks("tides", 4) + numbered_chunks("winds", 2))

    assert index.delete_document("tides") == 4
    backend.eventually(lambda: _assert_equal(index.count(), 2))
    assert index.get_chunks("tides") == []
    assert {h.doc_id for h in index.search("tidal energy")} == {"winds"}
    assert index.delete_document("tides") == 0
    assert index.delete_document("never-indexed") == 0


def test_replace_document_leaves_only_the_new_version(backend: Backend) -> None:
    index = backend.index
    old = [c.model_copy(update={"version": "v1"}) for c in numbered_chunks("tides", 6)]
    backend.write(old + numbered_chunks("winds", 2))
    new = [
        Chunk(doc_id="tides", chunk_id=n, title="Tides v2", content=f"Kelp forest {n}.", version="v2", page=n + 1)
        for n in range(3)
    ]
    assert index.replace_document("tides", new) == 3
    backend.eventually(lambda: _assert_equal(index.get_chunks("tides"), new))
    assert index.count() == 5
    assert index.replace_document("tides", new) == 3  # idempotent
    backend.eventually(lambda: _assert_equal(index.get_chunks("tides"), new))
    (hit,) = index.search("kelp forest 2", top=1)
    assert (hit.version, hit.page) == ("v2", 3)


def test_section_page_and_version_round_trip(backend: Backend) -> None:
    chunk = Chunk(
        doc_id="guide", chunk_id=0, title="G", content="Restore first.", section="Restore", page=4, version="ab"
    )
    backend.write([chunk])
    assert backend.index.get_chunks("guide") == [chunk]
    assert backend.index.export() == [chunk]


def test_an_english_question_finds_the_english_passage(backend: Backend) -> None:
    backend.write(library_chunks())
    hits = backend.index.search("How do I restore the knowledge index from a backup?")
    assert hits and hits[0].doc_id == "restore-en"
    assert hits[0].title == "Restoring the knowledge index"


def test_a_japanese_question_finds_the_japanese_passage(backend: Backend) -> None:
    backend.write(library_chunks())
    hits = backend.index.search("バックアップの復元手順は？")
    assert hits and hits[0].doc_id == "backup-ja"
    assert "復元" in hits[0].snippet


def test_snippet_quotes_the_passage(backend: Backend) -> None:
    backend.write(library_chunks())
    for hit in backend.index.search("dead-letter queue alert"):
        (chunk,) = backend.index.get_chunks(hit.doc_id, hit.chunk_id)
        assert hit.snippet and hit.snippet.strip("…") in chunk.content


def test_doc_filter_and_top(backend: Backend) -> None:
    index = backend.index
    backend.write(numbered_chunks("tides", 8) + numbered_chunks("winds", 8))

    assert len(index.search("tidal energy passage", top=3)) == 3
    assert len(index.search("tidal energy passage", top=50)) == 16
    only_winds = index.search("tidal energy passage", top=50, doc_id="winds")
    assert {h.doc_id for h in only_winds} == {"winds"} and len(only_winds) == 8
    assert index.search("tidal energy passage", doc_id="no-such-doc") == []
    scores = [h.score for h in index.search("tidal energy passage", top=10)]
    assert scores == sorted(scores, reverse=True)


HOSTILE_QUERIES = [
    '"',
    "AND OR",
    "*",
    "-x",
    "",
    "   ",
    "NOT",
    "a AND",
    "(",
    ")",
    "^",
    "title:kelp",
    "NEAR(a b)",
    '"unterminated phrase',
    "x*",
    "{}[]",
    "\\",
    "'; DROP TABLE chunks; --",
    "?!",
    "+-&|~/:",
    "バックアップ*",
]


def test_hostile_queries_do_not_raise(backend: Backend) -> None:
    backend.write(library_chunks())
    for query in HOSTILE_QUERIES:
        for doc_id in (None, "backup-ja", "it's"):
            try:
                hits = backend.index.search(query, doc_id=doc_id)
            except Exception as exc:  # report which input broke it
                pytest.fail(f"search({query!r}, doc_id={doc_id!r}) raised {exc!r}")
            assert isinstance(hits, list)


def test_export_pages_every_key_once_in_key_order(backend: Backend) -> None:
    index = backend.index
    chunks = [
        *numbered_chunks("tides", 11),
        *numbered_chunks("Tides_2", 3),
        *numbered_chunks("tides-b", 4),
        *numbered_chunks("t=1", 2),
        *numbered_chunks("0tides", 2),
    ]
    backend.write(chunks)

    seen: list[str] = []
    after: str | None = None
    while page := index.export(after_key=after, size=5):
        assert len(page) <= 5
        seen.extend(c.key for c in page)
        after = page[-1].key
    assert seen == sorted(c.key for c in chunks)
    assert index.export(after_key=seen[-1]) == []
    (first,) = index.export(size=1)
    assert first == min(chunks, key=lambda c: c.key)


def test_reset_drops_every_chunk(backend: Backend) -> None:
    index = backend.index
    backend.write(library_chunks())
    index.reset()
    backend.eventually(lambda: _assert_equal(index.count(), 0))
    assert index.export() == []
    assert index.search("backup") == []
    backend.write(numbered_chunks("tides", 1))  # usable again straight after
    assert index.get_chunks("tides")


def test_definition_names_the_fields(backend: Backend) -> None:
    definition = backend.index.definition()
    names = {field["name"] for field in definition["fields"]}
    assert {"key", "doc_id", "chunk_id", "title", "url", "content"} <= names


def _assert_equal(actual: T, expected: T) -> T:
    assert actual == expected
    return actual


# --- scopes: a security filter on every read -------------------------------------------------------


def scoped(chunks: list[Chunk], scope: str) -> list[Chunk]:
    return [c.model_copy(update={"scope": scope}) for c in chunks]


def test_search_returns_only_the_given_scopes(backend: Backend) -> None:
    index = backend.index
    backend.write(
        scoped(numbered_chunks("acme-plan", 3, "Acme tidal plan"), "acme")
        + scoped(numbered_chunks("globex-plan", 3, "Globex tidal plan"), "globex")
        + numbered_chunks("handbook", 2, "Shared tidal handbook")
    )

    def docs(scopes: list[str] | None) -> set[str]:
        return {h.doc_id for h in index.search("tidal energy", top=20, scopes=scopes)}

    assert backend.eventually(lambda: _assert_equal(docs(["acme", "shared"]), {"acme-plan", "handbook"}))
    assert docs(["globex", "shared"]) == {"globex-plan", "handbook"}
    assert docs(["globex"]) == {"globex-plan"}
    assert docs([]) == set()
    assert docs(None) == {"acme-plan", "globex-plan", "handbook"}  # maintenance and admins: every scope
    assert {h.scope for h in index.search("tidal", top=20, scopes=["acme", "shared"])} == {"acme", "shared"}
    # doc_id does not reach around the filter.
    assert index.search("tidal", doc_id="acme-plan", scopes=["globex", "shared"]) == []
    assert {h.doc_id for h in index.search("tidal", doc_id="acme-plan", scopes=["acme"])} == {"acme-plan"}


def test_the_top_hits_are_picked_within_the_scopes(backend: Backend) -> None:
    # Globex's passages all outrank acme's one: acme must still get its own, not an empty page.
    loud = [
        Chunk(doc_id="globex-loud", chunk_id=n, title="tidal tidal", content="tidal tidal tidal energy", scope="globex")
        for n in range(30)
    ]
    quiet = Chunk(doc_id="acme-quiet", chunk_id=0, title="Notes", content="a long note that mentions tidal once")
    backend.write(loud + [quiet.model_copy(update={"scope": "acme"})])
    hits = backend.eventually(lambda: _nonempty(backend.index.search("tidal", top=5, scopes=["acme", "shared"])))
    assert [(h.doc_id, h.scope) for h in hits] == [("acme-quiet", "acme")]


def _nonempty(hits: list[T]) -> list[T]:
    assert hits
    return hits


def test_get_chunks_outside_the_scopes_reads_as_missing(backend: Backend) -> None:
    index = backend.index
    backend.write(scoped(numbered_chunks("acme-plan", 2), "acme"))
    assert index.get_chunks("acme-plan", scopes=["globex", "shared"]) == []
    assert index.get_chunks("acme-plan", 1, scopes=["globex", "shared"]) == []
    assert [c.scope for c in index.get_chunks("acme-plan", scopes=["acme", "shared"])] == ["acme", "acme"]
    assert len(index.get_chunks("acme-plan", 0, scopes=["acme"])) == 1
    assert index.get_chunks("acme-plan", scopes=[]) == []
    assert len(index.get_chunks("acme-plan")) == 2


def test_export_carries_each_chunks_scope(backend: Backend) -> None:
    backend.write(scoped(numbered_chunks("a", 1), "acme") + numbered_chunks("s", 1))
    assert {(c.doc_id, c.scope) for c in backend.index.export()} == {("a", "acme"), ("s", "shared")}


# --- the embedded index beyond the port: durability, threads, processes ---------------------------


def test_local_index_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "search.sqlite3"
    first = LocalKnowledgeIndex(path)
    first.upsert(library_chunks())
    first.close()

    reopened = LocalKnowledgeIndex(path)
    assert reopened.count() == len(library_chunks())
    assert reopened.search("バックアップの復元手順は？")[0].doc_id == "backup-ja"
    reopened.close()


def test_local_index_serves_many_threads(tmp_path: Path) -> None:
    index = LocalKnowledgeIndex(tmp_path / "search.sqlite3")
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            index.upsert(numbered_chunks(f"doc{n}", 20))
            assert index.search("tidal energy", doc_id=f"doc{n}", top=50)
        except BaseException as exc:  # collected and re-raised on the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert index.count() == 160
    index.close()


def _write_from_another_process(path: str, doc_id: str) -> None:
    index = LocalKnowledgeIndex(Path(path))
    index.upsert(numbered_chunks(doc_id, 50))
    index.close()


def test_local_index_is_shared_between_processes(tmp_path: Path) -> None:
    path = tmp_path / "search.sqlite3"
    index = LocalKnowledgeIndex(path)
    index.upsert(numbered_chunks("here", 50))
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_from_another_process, args=(str(path), f"there{n}")) for n in range(2)]
    for worker in workers:
        worker.start()
    index.upsert(numbered_chunks("here-too", 50))
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert index.count() == 200
    assert {h.doc_id for h in index.search("tidal energy", top=200)} == {"here", "here-too", "there0", "there1"}
    index.close()


def test_local_index_survives_vacuum(tmp_path: Path) -> None:
    """VACUUM renumbers implicit rowids; the FTS table must still point at the right chunks."""
    index = LocalKnowledgeIndex(tmp_path / "search.sqlite3")
    index.upsert(library_chunks())
    index.delete_document("restore-en")  # leaves gaps in the rowids for VACUUM to close
    index.upsert(numbered_chunks("tides", 3))
    index._file.connection().execute("VACUUM")
    assert index.search("バックアップの復元手順は？")[0].doc_id == "backup-ja"
    assert {h.doc_id for h in index.search("tidal energy")} == {"tides"}
    index.close()


def test_local_ranking_is_fts5s_bm25_and_follows_writes_from_another_connection(tmp_path: Path) -> None:
    """The in-memory ranking mirror returns FTS5's bm25() order and scores, and never serves a stale index."""
    from shared.adapters.local import fts5_reference
    from shared.adapters.local.search import CONTENT_WEIGHT, TITLE_WEIGHT

    path = tmp_path / "search.sqlite3"
    index, writer = LocalKnowledgeIndex(path), LocalKnowledgeIndex(path)
    index.upsert(library_chunks() + numbered_chunks("tides", 12))
    db = index._file.connection()
    fts5_reference.build(db)
    for query in ("How do I restore the knowledge index from a backup?", "バックアップの復元手順は？", "tidal energy"):
        fts5 = fts5_reference.top(db, query, 1000, TITLE_WEIGHT, CONTENT_WEIGHT)
        assert len(fts5) > 1
        hits = index.search(query, top=len(fts5))
        assert [(h.doc_id, h.chunk_id) for h in hits] == [(d, c) for d, c, _, _ in fts5]
        assert [h.score for h in hits] == pytest.approx([-r for _, _, _, r in fts5])
    writer.delete_document("tides")  # another object, as another process would: the mirror must notice
    assert index.search("tidal energy") == []
    writer.upsert(numbered_chunks("tides-again", 2))
    assert {h.doc_id for h in index.search("tidal energy")} == {"tides-again"}
    index.close()
    writer.close()


def test_local_replace_is_atomic_for_readers(tmp_path: Path) -> None:
    """A reader during replace_document sees the old version or the new, never a mix or a gap."""
    index = LocalKnowledgeIndex(tmp_path / "search.sqlite3")
    versions = {
        v: [Chunk(doc_id="doc", chunk_id=n, title="T", content=f"Passage {n} tidal.", version=v) for n in range(count)]
        for v, count in (("a", 7), ("b", 4))
    }
    index.replace_document("doc", versions["a"])
    stop = threading.Event()
    seen: list[tuple[set[str | None], int]] = []

    def read() -> None:
        while not stop.is_set():
            chunks = index.get_chunks("doc")
            seen.append(({c.version for c in chunks}, len(chunks)))

    reader = threading.Thread(target=read)
    reader.start()
    for n in range(60):
        index.replace_document("doc", versions["b" if n % 2 == 0 else "a"])
    stop.set()
    reader.join()
    assert len(seen) > 10
    assert all(found in (({"a"}, 7), ({"b"}, 4)) for found in seen), {str(f) for f in seen}
    index.close()


def test_an_index_from_before_versions_gains_the_new_columns(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "search.sqlite3"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE chunks (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, doc_id TEXT NOT NULL, "
        "chunk_id INTEGER NOT NULL, title TEXT NOT NULL, url TEXT, content TEXT NOT NULL)"
    )
    db.execute("INSERT INTO chunks (key, doc_id, chunk_id, title, content) VALUES ('old--c0000', 'old', 0, 'T', 'x')")
    db.commit()
    db.close()
    index = LocalKnowledgeIndex(path)
    assert index.get_chunks("old") == [Chunk(doc_id="old", chunk_id=0, title="T", content="x")]
    index.close()


def test_an_index_from_before_scopes_puts_its_chunks_in_shared_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import sqlite3

    path = tmp_path / "search.sqlite3"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE chunks (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, doc_id TEXT NOT NULL, "
        "chunk_id INTEGER NOT NULL, title TEXT NOT NULL, url TEXT, content TEXT NOT NULL, section TEXT, "
        "page INTEGER, version TEXT)"
    )
    db.execute(
        "CREATE VIRTUAL TABLE chunks_terms USING fts5 (title, content, tokenize = 'unicode61 remove_diacritics 0')"
    )
    for n in range(3):
        db.execute(
            "INSERT INTO chunks (id, key, doc_id, chunk_id, title, content) VALUES (?, ?, 'old', ?, 'Tides', 'tidal')",
            (n + 1, f"old--c{n:04d}", n),
        )
        db.execute("INSERT INTO chunks_terms (rowid, title, content) VALUES (?, 'tides', 'tidal')", (n + 1,))
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()

    with caplog.at_level("WARNING", logger="agent.search"):
        index = LocalKnowledgeIndex(path)
        index.close()
        index = LocalKnowledgeIndex(path)  # a second start finds nothing left to migrate
    migrated = [r for r in caplog.records if getattr(r, "event", None) == "index_scopes_migrated"]
    assert [getattr(r, "count", None) for r in migrated] == [3]
    assert {c.scope for c in index.get_chunks("old")} == {"shared"}
    assert len(index.search("tidal", top=5, scopes=["acme", "shared"])) == 3
    assert index.search("tidal", top=5, scopes=["acme"]) == []
    index.close()


# --- bulk ingest: the same index, ranking and recovery as writing chunk by chunk ---------------------


def _ranking(index: LocalKnowledgeIndex, query: str, scopes: list[str] | None = None) -> list[tuple[str, int, float]]:
    return [(h.doc_id, h.chunk_id, h.score) for h in index.search(query, top=50, scopes=scopes)]


def _scoped_library() -> list[Chunk]:
    chunks = library_chunks() + numbered_chunks("tides", 12) + numbered_chunks("more-tides", 5, title="Tidal energy")
    return [c.model_copy(update={"scope": ("acme", "globex", "shared")[n % 3]}) for n, c in enumerate(chunks)]


QUERIES = ("How do I restore the knowledge index from a backup?", "バックアップの復元手順は？", "tidal energy", "alert")


def test_bulk_ingested_chunks_rank_as_chunks_ingested_one_by_one(tmp_path: Path) -> None:
    chunks = _scoped_library()
    bulk, single = LocalKnowledgeIndex(tmp_path / "bulk.sqlite3"), LocalKnowledgeIndex(tmp_path / "single.sqlite3")
    bulk.upsert(chunks)
    for chunk in chunks:
        single.upsert([chunk])
    for query in QUERIES:
        for scopes in (None, ["acme", "shared"]):
            assert _ranking(bulk, query, scopes) == _ranking(single, query, scopes)
            assert _ranking(bulk, query, scopes)
    bulk.close()
    single.close()


def test_a_key_given_twice_in_one_batch_keeps_the_last(tmp_path: Path) -> None:
    index = LocalKnowledgeIndex(tmp_path / "search.sqlite3")
    first, second = numbered_chunks("d", 1)[0], numbered_chunks("d", 1, title="Second")[0]
    second = second.model_copy(update={"content": "Seaweed farming."})
    assert index.upsert([first, second]) == 2
    assert [c.title for c in index.get_chunks("d")] == ["Second"]
    assert index.search("tidal energy") == []
    assert [h.doc_id for h in index.search("seaweed")] == ["d"]
    index.close()


def test_re_upserting_a_batch_replaces_its_rows_and_ranks_as_a_fresh_index(tmp_path: Path) -> None:
    chunks = _scoped_library()
    index, fresh = LocalKnowledgeIndex(tmp_path / "index.sqlite3"), LocalKnowledgeIndex(tmp_path / "fresh.sqlite3")
    index.upsert([c.model_copy(update={"content": "An older version about seaweed."}) for c in chunks])
    index.upsert(chunks)
    fresh.upsert(chunks)
    assert index.count() == len(chunks)
    assert index.search("seaweed") == []
    for query in QUERIES:
        assert [(d, c) for d, c, _ in _ranking(index, query)] == [(d, c) for d, c, _ in _ranking(fresh, query)]
        assert [s for _, _, s in _ranking(index, query)] == pytest.approx([s for _, _, s in _ranking(fresh, query)])
    index.close()
    fresh.close()


def _crash_during_a_bulk_write(path: str) -> None:
    index = LocalKnowledgeIndex(Path(path))
    index.upsert(numbered_chunks("committed", 20))
    with index._write() as db:
        index._upsert(db, numbered_chunks("in-flight", 20, title="Seaweed"))
        os._exit(3)  # the process dies before the batch's COMMIT


def test_a_crash_mid_ingest_leaves_what_was_committed_and_the_mirror_matches_it(tmp_path: Path) -> None:
    path = tmp_path / "search.sqlite3"
    worker = multiprocessing.get_context("spawn").Process(target=_crash_during_a_bulk_write, args=(str(path),))
    worker.start()
    worker.join(timeout=60)
    assert worker.exitcode == 3
    recovered, reference = LocalKnowledgeIndex(path), LocalKnowledgeIndex(tmp_path / "reference.sqlite3")
    reference.upsert(numbered_chunks("committed", 20))
    assert recovered.count() == 20
    assert recovered.search("seaweed") == []
    assert _ranking(recovered, "tidal energy") == _ranking(reference, "tidal energy")
    recovered.close()
    reference.close()


def _write_a_schema_3_index(path: Path, chunks: list[Chunk]) -> None:
    """An index file as schema 3 wrote it: the terms as text in an FTS5 table, joined to chunks by rowid."""
    import sqlite3

    from shared.text import tokenize

    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE chunks (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, doc_id TEXT NOT NULL, "
        "chunk_id INTEGER NOT NULL, title TEXT NOT NULL, url TEXT, content TEXT NOT NULL, section TEXT, "
        "page INTEGER, version TEXT, scope TEXT NOT NULL DEFAULT 'shared')"
    )
    db.execute("CREATE INDEX chunks_by_doc ON chunks (doc_id, chunk_id)")
    db.execute(
        "CREATE VIRTUAL TABLE chunks_terms USING fts5 (title, content, tokenize = 'unicode61 remove_diacritics 0')"
    )
    db.execute("CREATE TABLE generation (id INTEGER PRIMARY KEY CHECK (id = 0), value INTEGER NOT NULL)")
    db.execute("INSERT INTO generation (id, value) VALUES (0, 7)")
    for rowid, c in enumerate(chunks, start=1):
        db.execute(
            "INSERT INTO chunks (id, key, doc_id, chunk_id, title, content, scope) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (rowid, c.key, c.doc_id, c.chunk_id, c.title, c.content, c.scope),
        )
        db.execute(
            "INSERT INTO chunks_terms (rowid, title, content) VALUES (?, ?, ?)",
            (rowid, " ".join(tokenize(c.title)), " ".join(tokenize(c.content))),
        )
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()


def test_a_schema_3_index_moves_its_terms_to_the_rows_and_ranks_as_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An existing DATA_DIR's index opens, ranks exactly as a fresh index of the same chunks, and takes new ones."""
    import sqlite3

    chunks = _scoped_library()
    _write_a_schema_3_index(tmp_path / "old.sqlite3", chunks)
    with caplog.at_level("WARNING", logger="agent.search"):
        old = LocalKnowledgeIndex(tmp_path / "old.sqlite3")
        old.close()
        old = LocalKnowledgeIndex(tmp_path / "old.sqlite3")  # a second start finds nothing left to migrate
    migrated = [r for r in caplog.records if getattr(r, "event", None) == "index_terms_migrated"]
    assert [getattr(r, "count", None) for r in migrated] == [len(chunks)]
    fresh = LocalKnowledgeIndex(tmp_path / "fresh.sqlite3")
    fresh.upsert(chunks)
    for query in QUERIES:
        for scopes in (None, ["acme", "shared"]):
            assert _ranking(old, query, scopes) == _ranking(fresh, query, scopes)
            assert _ranking(old, query, scopes)
    more = numbered_chunks("seaweed", 3, title="Seaweed farming")
    old.upsert(more)
    fresh.upsert(more)
    assert _ranking(old, "seaweed tidal") == _ranking(fresh, "seaweed tidal")
    old.close()
    fresh.close()
    db = sqlite3.connect(tmp_path / "old.sqlite3")
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'chunks_terms'").fetchall() == []
    assert db.execute("PRAGMA user_version").fetchone() == (4,)
    db.close()


def test_writers_on_one_file_share_its_vocabulary_and_a_failed_write_leaves_no_trace(tmp_path: Path) -> None:
    """Term ids are per file: two writers (as two processes) each add terms, one write fails midway,
    and every term still means the same thing to every reader."""
    path = tmp_path / "search.sqlite3"
    first, second = LocalKnowledgeIndex(path), LocalKnowledgeIndex(path)
    first.upsert(numbered_chunks("tides", 3))
    second.upsert([Chunk(doc_id="kelp", chunk_id=0, title="Kelp", content="Kelp forests store carbon.")])
    with pytest.raises(RuntimeError), first._write() as db:
        first._upsert(db, [Chunk(doc_id="lost", chunk_id=0, title="Lost", content="Ephemeral zebras.")])
        raise RuntimeError("the write fails before its commit")
    first.upsert([Chunk(doc_id="moss", chunk_id=0, title="Moss", content="Moss on carbon-rich bogs.")])
    second.upsert([Chunk(doc_id="reef", chunk_id=0, title="Reef", content="Zebras never visit a reef.")])
    reader = LocalKnowledgeIndex(path)
    assert {h.doc_id for h in reader.search("carbon")} == {"kelp", "moss"}
    assert [h.doc_id for h in reader.search("zebras")] == ["reef"]
    assert {h.doc_id for h in reader.search("tidal energy")} == {"tides"}
    assert [h.doc_id for h in first.search("kelp")] == ["kelp"]
    for index in (first, second, reader):
        index.close()


def _full_reads(index: LocalKnowledgeIndex) -> list[str]:
    """The statements of this thread's connection that read every row back to rebuild the mirror, from now on."""
    reads: list[str] = []
    index._file.connection().set_trace_callback(
        lambda sql: reads.append(sql) if "content_terms FROM chunks" in sql else None
    )
    return reads


def test_rows_this_process_appended_join_the_mirror_without_reading_the_file_back(tmp_path: Path) -> None:
    chunks = _scoped_library()
    index, fresh = LocalKnowledgeIndex(tmp_path / "index.sqlite3"), LocalKnowledgeIndex(tmp_path / "fresh.sqlite3")
    fresh.upsert(chunks)
    reads = _full_reads(index)
    index.upsert(chunks[:5])  # into an empty file: the mirror is these rows alone
    assert [h.doc_id for h in index.search("restore")]
    index.upsert(chunks[5:12])
    index.upsert(chunks[12:])  # two appends in a row, one rebuild
    for query in QUERIES:
        for scopes in (None, ["acme", "shared"]):
            assert _ranking(index, query, scopes) == _ranking(fresh, query, scopes)
    assert reads == []
    index.upsert([chunks[0]])  # a replacement is not an append: the next rebuild reads the file
    fresh.upsert([chunks[0]])
    assert _ranking(index, "tidal energy") == _ranking(fresh, "tidal energy")
    assert len(reads) == 1
    index.close()
    fresh.close()


def test_a_write_by_another_process_between_appends_makes_the_mirror_read_the_file(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    index, other = LocalKnowledgeIndex(path), LocalKnowledgeIndex(path)
    index.upsert(numbered_chunks("tides", 3))
    index.search("tidal")
    reads = _full_reads(index)
    other.upsert([Chunk(doc_id="kelp", chunk_id=0, title="Kelp", content="Tidal kelp forests.")])
    index.upsert(numbered_chunks("more-tides", 2))
    assert {h.doc_id for h in index.search("tidal", top=10)} == {"tides", "kelp", "more-tides"}
    assert len(reads) == 1
    index.close()
    other.close()


def test_appended_rows_are_held_only_up_to_a_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.adapters.local import search

    monkeypatch.setattr(search, "MAX_APPENDED_ROWS", 4)
    index = LocalKnowledgeIndex(tmp_path / "index.sqlite3")
    index.upsert(numbered_chunks("tides", 3))
    assert index._appended is not None
    index.upsert(numbered_chunks("more-tides", 2))  # 5 rows held would pass the bound
    assert index._appended is None
    assert {h.doc_id for h in index.search("tidal", top=10)} == {"tides", "more-tides"}
    index.close()


def _upsert_then_wait_to_be_killed(path: str, ready: Any) -> None:
    index = LocalKnowledgeIndex(Path(path))
    index.upsert(numbered_chunks("durable", 30, title="Seaweed"))
    ready.set()  # upsert returned: from here on the batch must survive anything
    time.sleep(60)


def test_an_upsert_that_returned_survives_the_process_being_killed(tmp_path: Path) -> None:
    """Durable at return: the commit is fsync'd (WAL, synchronous=FULL), and a SIGKILL right after loses nothing."""
    import signal

    path = tmp_path / "search.sqlite3"
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    worker = context.Process(target=_upsert_then_wait_to_be_killed, args=(str(path), ready))
    worker.start()
    assert ready.wait(timeout=60)
    os.kill(worker.pid, signal.SIGKILL)  # type: ignore[arg-type]
    worker.join(timeout=10)
    recovered = LocalKnowledgeIndex(path)
    assert recovered.count() == 30
    assert {h.doc_id for h in recovered.search("seaweed", top=50)} == {"durable"}
    db = recovered._file.connection()
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL: the WAL is fsync'd at every commit
    recovered.close()
