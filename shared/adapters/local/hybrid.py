"""SEARCH_MODE=hybrid: the embedded BM25 index plus sentence vectors, fused by reciprocal rank fusion.

The wrapped LocalKnowledgeIndex stays the source of truth for chunks and BM25. Beside it, in its
own SQLite file, each chunk has one all-MiniLM-L6-v2 vector with the chunk's doc_id and scope, so
the vector side applies the same doc_id/scopes filters as the BM25 side before ranking. A search
takes the top CANDIDATES of each side and scores every chunk by sum(1 / (RRF_K + rank)) over the
lists it appears in (Cormack et al. 2009; k = 60 as there and in Azure AI Search's hybrid mode).

The model is English-only: a Japanese query gets BM25 alone (its vector would be noise that
pushes good BM25 hits down).

Writes embed first (the slow part, outside any transaction), then write the chunks, then the
vectors. A crash between the two leaves chunks without vectors (BM25 still finds them) or vectors
of chunks that are gone (dropped at search time, since hits are read back from the index);
`backfill()` repairs both and also builds the vectors of an index written in bm25 mode.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared.adapters.local.search import LocalKnowledgeIndex
from shared.adapters.local.sqlite_file import SqliteFile
from shared.contracts import Chunk, SearchHit
from shared.errors import DependencyUnavailable
from shared.text import best_snippet, detect_language

RRF_K = 60
CANDIDATES = 50  # per side; RRF needs enough depth for a chunk ranked low by one side to surface

Encode = Callable[[list[str]], np.ndarray]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS vectors (
    key TEXT PRIMARY KEY,
    doc_id TEXT NOT NULL,
    chunk_id INTEGER NOT NULL,
    scope TEXT NOT NULL,
    vector BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS vectors_by_doc ON vectors (doc_id)",
    "CREATE TABLE IF NOT EXISTS generation (id INTEGER PRIMARY KEY CHECK (id = 0), value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO generation (id, value) VALUES (0, 0)",
)


def passage_text(chunk: Chunk) -> str:
    """What is embedded: the title and heading give a chunk the context a reader would have.

    Measured by bench/retrieval.py (English): content alone 0.50 / 0.75 / 0.658 (hit@1 / hit@3 /
    MRR), with title and heading 0.58 / 0.83 / 0.720.
    """
    return "\n".join(part for part in (chunk.title, chunk.section, chunk.content) if part)


def _scope_of(chunk: Chunk) -> str:
    return str(getattr(chunk, "scope", "shared"))


class _VectorSnapshot:
    """Every vector as one matrix, for one generation of the file: a search is one matrix-vector product."""

    def __init__(self, rows: list[tuple[Any, ...]], generation: int) -> None:
        self.generation = generation
        self.doc_ids = np.array([r[0] for r in rows], dtype=object)
        self.chunk_ids = [int(r[1]) for r in rows]
        self.scopes = np.array([r[2] for r in rows], dtype=object)
        self.matrix = (
            np.vstack([np.frombuffer(r[3], dtype=np.float32) for r in rows])
            if rows
            else np.zeros((0, 1), dtype=np.float32)
        )

    def top(
        self, query: np.ndarray, n: int, *, doc_id: str | None, scopes: Sequence[str] | None
    ) -> list[tuple[str, int]]:
        if not self.chunk_ids:
            return []
        scores = self.matrix @ query
        allowed = np.ones(len(self.chunk_ids), dtype=bool)
        if doc_id is not None:
            allowed &= self.doc_ids == doc_id
        if scopes is not None:
            allowed &= np.isin(self.scopes, list(scopes))
        candidates = np.flatnonzero(allowed)
        if candidates.size == 0:
            return []
        picked = candidates[np.argsort(-scores[candidates], kind="stable")[:n]]
        return [(str(self.doc_ids[i]), self.chunk_ids[i]) for i in picked]


class HybridKnowledgeIndex:
    """KnowledgeIndex: LocalKnowledgeIndex's BM25 fused with vector search (see the module docstring)."""

    def __init__(self, inner: LocalKnowledgeIndex, path: Path, encode: Encode) -> None:
        self.inner = inner
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._encode = encode
        self._file = SqliteFile(self.path, "vector index", timeout=30.0)
        self._snapshot: _VectorSnapshot | None = None
        self._snapshot_lock = threading.Lock()
        with self._file.write() as db:
            for statement in _SCHEMA:
                db.execute(statement)

    # --- the vector file -----------------------------------------------------------------------

    def _vectors_of(self, chunks: list[Chunk]) -> list[tuple[str, str, int, str, bytes]]:
        vectors = self._encode([passage_text(c) for c in chunks])
        return [
            (c.key, c.doc_id, c.chunk_id, _scope_of(c), np.asarray(v, dtype=np.float32).tobytes())
            for c, v in zip(chunks, vectors, strict=True)
        ]

    @staticmethod
    def _store(db: sqlite3.Connection, rows: list[tuple[str, str, int, str, bytes]], *, replace: bool = True) -> None:
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        db.executemany(f"{verb} INTO vectors (key, doc_id, chunk_id, scope, vector) VALUES (?, ?, ?, ?, ?)", rows)

    def _current(self) -> _VectorSnapshot:
        db = self._file.connection()
        (generation,) = db.execute("SELECT value FROM generation WHERE id = 0").fetchone()
        snapshot = self._snapshot
        if snapshot is not None and snapshot.generation == generation:
            return snapshot
        with self._snapshot_lock:
            snapshot = self._snapshot
            if snapshot is not None and snapshot.generation == generation:
                return snapshot
            db.execute("BEGIN")  # the rows and the generation they belong to, in one snapshot
            try:
                (generation,) = db.execute("SELECT value FROM generation WHERE id = 0").fetchone()
                rows = db.execute("SELECT doc_id, chunk_id, scope, vector FROM vectors").fetchall()
            finally:
                db.execute("COMMIT")
            self._snapshot = _VectorSnapshot(rows, generation)
            return self._snapshot

    def vector_count(self) -> int:
        return int(self._file.connection().execute("SELECT count(*) FROM vectors").fetchone()[0])

    def needs_backfill(self) -> bool:
        return self.vector_count() != self.inner.count()

    def backfill(self, *, page: int = 256) -> int:
        """Embed the chunks that have no vector and drop vectors whose chunk is gone; return how many embedded.

        Safe beside live writes: it never overwrites a vector (a live write's is newer than the text
        it exported) and re-checks a chunk is really gone before dropping its vector.
        """
        db = self._file.connection()
        stored = {row[0] for row in db.execute("SELECT key FROM vectors")}
        seen: set[str] = set()
        embedded = 0
        after: str | None = None
        while batch := self.inner.export(after_key=after, size=page):
            after = batch[-1].key
            seen.update(c.key for c in batch)
            missing = [c for c in batch if c.key not in stored]
            if missing:
                rows = self._vectors_of(missing)
                with self._file.write() as w:
                    self._store(w, rows, replace=False)
                embedded += len(missing)
        gone = [
            (key,)
            for key, doc_id, chunk_id in db.execute("SELECT key, doc_id, chunk_id FROM vectors").fetchall()
            if key in stored and key not in seen and not self.inner.get_chunks(doc_id, chunk_id)
        ]
        if gone:
            with self._file.write() as w:
                w.executemany("DELETE FROM vectors WHERE key = ?", gone)
        return embedded

    # --- KnowledgeIndex ------------------------------------------------------------------------

    def upsert(self, chunks: list[Chunk]) -> int:
        rows = self._vectors_of(chunks)
        written = self.inner.upsert(chunks)
        with self._file.write() as db:
            self._store(db, rows)
        return written

    def replace_document(self, doc_id: str, chunks: list[Chunk]) -> int:
        rows = self._vectors_of(chunks)
        written = self.inner.replace_document(doc_id, chunks)
        with self._file.write() as db:
            db.execute("DELETE FROM vectors WHERE doc_id = ?", (doc_id,))
            self._store(db, rows)
        return written

    def delete_document(self, doc_id: str) -> int:
        removed = self.inner.delete_document(doc_id)
        with self._file.write() as db:
            db.execute("DELETE FROM vectors WHERE doc_id = ?", (doc_id,))
        return removed

    def reset(self) -> None:
        self.inner.reset()
        with self._file.write() as db:
            db.execute("DELETE FROM vectors")

    def search(
        self, query: str, *, top: int = 5, doc_id: str | None = None, scopes: Sequence[str] | None = None
    ) -> list[SearchHit]:
        if top < 1:
            return []
        scoped: dict[str, Any] = {} if scopes is None else {"scopes": scopes}
        depth = max(CANDIDATES, top)
        lexical = self.inner.search(query, top=depth, doc_id=doc_id, **scoped)
        if not query.strip() or detect_language(query) == "ja":
            return lexical[:top]
        semantic = self._current().top(self._encode([query])[0], depth, doc_id=doc_id, scopes=scopes)
        fused: dict[tuple[str, int], float] = {}
        for ranking in ([(h.doc_id, h.chunk_id) for h in lexical], semantic):
            for rank, key in enumerate(ranking, start=1):
                fused[key] = fused.get(key, 0.0) + 1.0 / (RRF_K + rank)
        by_key = {(h.doc_id, h.chunk_id): h for h in lexical}
        hits: list[SearchHit] = []
        for key, score in sorted(fused.items(), key=lambda item: -item[1]):
            hit = by_key.get(key) or self._hit(key, query, scoped)
            if hit is not None:  # None: the vector outlived its chunk (see the module docstring)
                hits.append(hit.model_copy(update={"score": score}))
            if len(hits) == top:
                break
        return hits

    def _hit(self, key: tuple[str, int], query: str, scoped: dict[str, Any]) -> SearchHit | None:
        found = self.inner.get_chunks(key[0], key[1], **scoped)
        if not found:
            return None
        chunk = found[0]
        fields: dict[str, Any] = chunk.model_dump(exclude={"content"})
        return SearchHit(**fields, score=0.0, snippet=best_snippet(chunk.content, query))

    def get_chunks(
        self, doc_id: str, chunk_id: int | None = None, *, scopes: Sequence[str] | None = None
    ) -> list[Chunk]:
        scoped: dict[str, Any] = {} if scopes is None else {"scopes": scopes}
        return self.inner.get_chunks(doc_id, chunk_id, **scoped)

    def export(self, *, after_key: str | None = None, size: int = 1000) -> list[Chunk]:
        return self.inner.export(after_key=after_key, size=size)

    def count(self) -> int:
        return self.inner.count()

    def definition(self) -> dict[str, Any]:
        return {
            **self.inner.definition(),
            "vectors": {
                "model": "all-MiniLM-L6-v2 (mean pooling, unit norm), English queries only",
                "dimensions": int(self._current().matrix.shape[1]) if self.vector_count() else None,
                "fusion": f"reciprocal rank fusion, k={RRF_K}, {CANDIDATES} candidates per side",
            },
        }

    def ping(self) -> None:
        self.inner.ping()
        try:
            self._file.connection().execute("SELECT 1 FROM vectors LIMIT 1").fetchall()
        except sqlite3.Error as error:
            raise DependencyUnavailable(f"vector index {self.path} is not readable: {error}") from error

    def close(self) -> None:
        self.inner.close()
        self._file.close()
