"""The embedded knowledge index: one SQLite file of chunks and their analysed terms, ranked by BM25.

shared.text.tokenize() does the analysis (words, CJK bigrams: FTS5's own tokenizers cannot split
Japanese). Each chunk row holds its text, which citations and snippets use, and its terms as
packed term ids (shared.adapters.local.term_ids), written in the same row, the same transaction.

Queries are ranked by an in-memory ranking mirror (shared.adapters.local.ranking) built from
those ids, which computes FTS5's bm25() in a fraction of FTS5's time. The mirror is rebuilt
whenever the file's write generation (the `generation` row, bumped in every write transaction
by any thread or process) moves past the one it was built at.

Schema 3 and older kept the terms as text in an FTS5 table that only the mirror read. Opening
such a file converts those terms to ids (the stored terms, not a fresh analysis, so rankings stay
as they were) and drops the table: writing it was most of an ingest's cost.

Every chunk has a scope (its tenant, or `shared`). A search or read given scopes sees only
those: the mirror ranks only rows in them, and the SQL that reads the rows back filters on the
scope column again, so a hit outside them cannot come back even from a stale mirror.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.adapters.local.ranking import RankingMirror
from shared.adapters.local.sqlite_file import SqliteFile
from shared.adapters.local.term_ids import SCHEMA as VOCABULARY_SCHEMA
from shared.adapters.local.term_ids import Vocabulary, read_vocabulary
from shared.contracts import SHARED_SCOPE, Chunk, SearchHit
from shared.errors import DependencyUnavailable
from shared.text import best_snippet, tokenize

log = logging.getLogger("agent.search")

SCHEMA_VERSION = 4
PAGE_SIZE = 16384
TITLE_WEIGHT = 2.0
CONTENT_WEIGHT = 1.0

_SCHEMA = (
    # An explicit INTEGER PRIMARY KEY, because VACUUM may renumber implicit rowids, and the mirror
    # ranks by id (the newer row first on a tie). key is the index key all the same (UNIQUE, upserted on).
    """CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    doc_id TEXT NOT NULL,
    chunk_id INTEGER NOT NULL,
    title TEXT NOT NULL,
    url TEXT,
    content TEXT NOT NULL,
    section TEXT,
    page INTEGER,
    version TEXT,
    scope TEXT NOT NULL DEFAULT 'shared',
    title_terms BLOB,
    content_terms BLOB
    )""",
    "CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks (doc_id, chunk_id)",
    VOCABULARY_SCHEMA,
    # Bumped by every write transaction: the ranking mirror's "am I current?" check, across processes.
    "CREATE TABLE IF NOT EXISTS generation (id INTEGER PRIMARY KEY CHECK (id = 0), value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO generation (id, value) VALUES (0, 0)",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)
# Columns added after schema 1: an index file written before them gains them on open (NULL = unknown).
_ADDED_COLUMNS = (
    ("section", "TEXT"),
    ("page", "INTEGER"),
    ("version", "TEXT"),
    ("title_terms", "BLOB"),  # schema 4: NULL until the migration below fills them
    ("content_terms", "BLOB"),
)

# Schema 3 gave every chunk a scope (its tenant, or shared); the chunks of an older file were
# published before tenants owned knowledge, so they become shared (counted and logged once).
_SCOPE_COLUMN = f"scope TEXT NOT NULL DEFAULT '{SHARED_SCOPE}'"

_CHUNK_COLUMNS = "doc_id, chunk_id, title, url, content, section, page, version, scope"


def _row_to_chunk(row: tuple[Any, ...]) -> Chunk:
    return Chunk(
        doc_id=row[0],
        chunk_id=row[1],
        title=row[2],
        url=row[3],
        content=row[4],
        section=row[5],
        page=row[6],
        version=row[7],
        scope=row[8],
    )


def _in_scopes(scopes: Sequence[str]) -> tuple[str, list[object]]:
    """The SQL condition "scope is one of scopes" and its parameters (no scopes: nothing matches)."""
    wanted = list[object](dict.fromkeys(scopes))
    if not wanted:
        return "0", []
    return f"scope IN ({','.join('?' * len(wanted))})", wanted


_WEIGHTS = (TITLE_WEIGHT, CONTENT_WEIGHT)
# Appended rows held for the next rebuild at most (a few MB): a process that only writes, and so
# never rebuilds, must not keep every row it wrote.
MAX_APPENDED_ROWS = 20_000
MirrorRow = tuple[int, str, str, bytes, bytes]  # rowid, doc_id, scope, title term ids, content term ids


@dataclass(frozen=True)
class _Appended:
    """Rows this process appended in the writes from generation `base` (None: from an empty file) to
    `generation`, and the vocabulary then."""

    base: int | None
    generation: int
    rows: list[MirrorRow]
    vocabulary: list[str]


class LocalKnowledgeIndex:
    """KnowledgeIndex in one SQLite file: WAL, one connection per thread, safe across processes.

    upsert replaces chunks by key. Re-indexing a document that now has fewer chunks leaves the old
    tail in place, so callers replacing a document call delete_document(doc_id) first (as with
    Azure AI Search, whose upload action is also per key).
    """

    def __init__(self, path: Path, *, busy_timeout_seconds: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # FULL: a committed upsert survives power loss, not just a process crash. 16 KB pages: a chunk
        # row (text and term ids) is 1-2 KB, and a 10,000-chunk upsert with its commit took about 40%
        # less time than with SQLite's default 4 KB (bench/search.py). Files made before keep theirs.
        self._file = SqliteFile(
            self.path,
            "knowledge index",
            timeout=busy_timeout_seconds,
            pragmas=("PRAGMA synchronous = FULL",),
            page_size=PAGE_SIZE,
        )
        self._mirror: RankingMirror | None = None
        self._mirror_lock = threading.Lock()
        self._appended: _Appended | None = None
        self._vocabulary = Vocabulary()
        self._write_lock = threading.Lock()  # the vocabulary is the writer's: one write at a time in a process
        with self._file.write() as db:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            existing = {row[1] for row in db.execute("PRAGMA table_info(chunks)")}
            if existing:
                for name, kind in _ADDED_COLUMNS:
                    if name not in existing:
                        db.execute(f"ALTER TABLE chunks ADD COLUMN {name} {kind}")
                if "scope" not in existing:
                    (unscoped,) = db.execute("SELECT count(*) FROM chunks").fetchone()
                    db.execute(f"ALTER TABLE chunks ADD COLUMN {_SCOPE_COLUMN}")
                    log.warning(
                        "knowledge index %s: %d chunk(s) from before scopes are now in the shared scope",
                        self.path,
                        unscoped,
                        extra={"event": "index_scopes_migrated", "count": unscoped},
                    )
            for statement in _SCHEMA:
                db.execute(statement)
            if existing and version < SCHEMA_VERSION:
                try:
                    self._vocabulary.begin(db)
                    self._migrate_terms(db)
                    self._vocabulary.flush(db)
                finally:
                    self._vocabulary.forget()  # the next write reads the vocabulary as committed

    def _migrate_terms(self, db: sqlite3.Connection) -> None:
        """Give every chunk without term ids its ids: from an older file's FTS5 table if there is one, else its text."""
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'chunks_terms'").fetchone():
            stored = db.execute("SELECT rowid, title, content FROM chunks_terms").fetchall()
            encode = self._vocabulary.encode_tokens
            db.executemany(
                "UPDATE chunks SET title_terms = ?, content_terms = ? WHERE id = ?",
                [(encode(title.split()), encode(content.split()), rowid) for rowid, title, content in stored],
            )
            db.execute("DROP TABLE chunks_terms")
            log.warning(
                "knowledge index %s: the terms of %d chunk(s) moved from the FTS5 table to their rows",
                self.path,
                len(stored),
                extra={"event": "index_terms_migrated", "count": len(stored)},
            )
        unanalysed = db.execute("SELECT id, title, content FROM chunks WHERE title_terms IS NULL").fetchall()
        analyse = self._vocabulary.encode
        db.executemany(
            "UPDATE chunks SET title_terms = ?, content_terms = ? WHERE id = ?",
            [(analyse(title), analyse(content), rowid) for rowid, title, content in unanalysed],
        )

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction whose new terms commit with it; if it fails, the vocabulary in memory is dropped."""
        with self._write_lock:
            try:
                with self._file.write() as db:
                    self._vocabulary.begin(db)
                    yield db
                    self._vocabulary.flush(db)
            except BaseException:
                self._vocabulary.forget()  # ids handed out in the failed transaction do not exist
                raise

    # --- connections ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection this index opened (from any thread)."""
        self._file.close()

    # --- KnowledgeIndex ------------------------------------------------------------------------

    def upsert(self, chunks: list[Chunk]) -> int:
        with self._write() as db:
            (before, empty) = db.execute(
                "SELECT value, NOT EXISTS (SELECT 1 FROM chunks) FROM generation WHERE id = 0"
            ).fetchone()
            appended = self._upsert(db, chunks)
            vocabulary = self._vocabulary.terms()
        self._note_append(before, bool(empty), appended, vocabulary)
        return len(chunks)

    def _upsert(self, db: sqlite3.Connection, chunks: list[Chunk]) -> list[MirrorRow] | None:
        """Write chunks in bulk: one executemany of whole rows (text and term ids) per batch.

        A chunk whose key is already indexed is replaced: its old rows go first, and it is written
        again under a new rowid (so it ranks as the newest row on a tie, as FTS5 would scan it).
        Returns the rows as the ranking mirror takes them if the batch only added rows, else None.
        """
        latest = {chunk.key: chunk for chunk in chunks}  # a key given twice: the last one wins
        if not latest:
            return []
        stale = [
            (rowid,)
            for (rowid,) in db.execute(
                "SELECT id FROM chunks WHERE key IN (SELECT value FROM json_each(?))", (json.dumps(list(latest)),)
            )
        ]
        if stale:
            db.executemany("DELETE FROM chunks WHERE id = ?", stale)
        (last,) = db.execute("SELECT coalesce(max(id), 0) FROM chunks").fetchone()
        rowids = range(last + 1, last + 1 + len(latest))
        encode = self._vocabulary.encode
        written = [
            (
                rowid,
                key,
                c.doc_id,
                c.chunk_id,
                c.title,
                c.url,
                c.content,
                c.section,
                c.page,
                c.version,
                c.scope,
                encode(c.title),
                encode(c.content),
            )
            for rowid, (key, c) in zip(rowids, latest.items(), strict=True)
        ]
        db.executemany(
            """INSERT INTO chunks (id, key, doc_id, chunk_id, title, url, content, section, page, version, scope,
                                   title_terms, content_terms)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            written,
        )
        return None if stale else [(r[0], r[2], r[10], r[11], r[12]) for r in written]

    def _note_append(self, before: int, empty: bool, rows: list[MirrorRow] | None, vocabulary: list[str]) -> None:
        """Remember rows this process appended in the write after generation `before` (to a file with
        no rows if `empty`), so the next rebuild adds them to the mirror it has (or builds it from them
        alone) instead of reading every row back from the file.

        Only a chain of appends straight after the mirror's generation (or an empty file) qualifies:
        any other write (a delete, a replace, another process's write) leaves a gap in the chain, and
        then the rebuild reads the file as before.
        """
        with self._mirror_lock:
            pending, mirror = self._appended, self._mirror
            if rows is None or len(rows) + (len(pending.rows) if pending else 0) > MAX_APPENDED_ROWS:
                self._appended = None
            elif empty:
                self._appended = _Appended(None, before + 1, rows, vocabulary)
            elif pending is not None and pending.generation == before:
                self._appended = _Appended(pending.base, before + 1, pending.rows + rows, vocabulary)
            elif mirror is not None and mirror.generation == before:
                self._appended = _Appended(before, before + 1, rows, vocabulary)
            else:
                self._appended = None

    @staticmethod
    def _delete(db: sqlite3.Connection, doc_id: str) -> int:
        return int(db.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,)).rowcount)

    def delete_document(self, doc_id: str) -> int:
        with self._file.write() as db:
            return self._delete(db, doc_id)

    def replace_document(self, doc_id: str, chunks: list[Chunk]) -> int:
        """Swap every chunk of doc_id for chunks in one transaction: readers see the old version or the new."""
        with self._write() as db:
            self._delete(db, doc_id)
            self._upsert(db, chunks)
        return len(chunks)

    def search(
        self, query: str, *, top: int = 5, doc_id: str | None = None, scopes: Sequence[str] | None = None
    ) -> list[SearchHit]:
        terms = list(dict.fromkeys(tokenize(query)))
        if not terms or top < 1:
            return []
        db = self._file.connection()
        # The mirror ranks only rows in scopes (so the top `top` are the caller's); the read below
        # checks the scope again in SQL, so a row that changed scope since the mirror was built is dropped.
        ranked = self._current_mirror(db).top(terms, top, doc_id=doc_id, scopes=scopes)
        if not ranked:
            return []
        marks = ",".join("?" * len(ranked))
        where, params = f"id IN ({marks})", list[object](rowid for rowid, _ in ranked)
        if scopes is not None:
            in_scopes, wanted = _in_scopes(scopes)
            where, params = f"{where} AND {in_scopes}", params + wanted
        found = {
            row[0]: row[1:] for row in db.execute(f"SELECT id, {_CHUNK_COLUMNS} FROM chunks WHERE {where}", params)
        }
        return [
            SearchHit(
                doc_id=r[0],
                chunk_id=r[1],
                title=r[2],
                url=r[3],
                score=score,
                snippet=best_snippet(r[4], query),
                section=r[5],
                page=r[6],
                version=r[7],
                scope=r[8],
            )
            for rowid, score in ranked
            if (r := found.get(rowid)) is not None
        ]

    def _current_mirror(self, db: sqlite3.Connection) -> RankingMirror:
        """The ranking mirror as of the file's latest write, rebuilt from the rows' term ids if it is behind."""
        (generation,) = db.execute("SELECT value FROM generation WHERE id = 0").fetchone()
        mirror = self._mirror
        if mirror is not None and mirror.generation == generation:
            return mirror
        with self._mirror_lock:
            mirror = self._mirror
            if mirror is not None and mirror.generation == generation:
                return mirror
            appended, self._appended = self._appended, None
            if appended is not None and appended.generation == generation:
                if appended.base is None:  # the file held nothing else
                    self._mirror = RankingMirror(appended.rows, appended.vocabulary, generation, *_WEIGHTS)
                    return self._mirror
                if mirror is not None and mirror.generation == appended.base:
                    self._mirror = RankingMirror(
                        mirror.rows + appended.rows, appended.vocabulary, generation, *_WEIGHTS
                    )
                    return self._mirror
            db.execute("BEGIN")  # one snapshot: the rows and the generation they belong to
            try:
                (generation,) = db.execute("SELECT value FROM generation WHERE id = 0").fetchone()
                rows = db.execute("SELECT id, doc_id, scope, title_terms, content_terms FROM chunks").fetchall()
                vocabulary = read_vocabulary(db)
            finally:
                db.execute("COMMIT")
            self._mirror = RankingMirror(rows, vocabulary, generation, *_WEIGHTS)
            return self._mirror

    def get_chunks(
        self, doc_id: str, chunk_id: int | None = None, *, scopes: Sequence[str] | None = None
    ) -> list[Chunk]:
        where, params = "doc_id = ?", list[object]([doc_id])
        if chunk_id is not None:
            where, params = f"{where} AND chunk_id = ?", [*params, chunk_id]
        if scopes is not None:
            in_scopes, wanted = _in_scopes(scopes)
            where, params = f"{where} AND {in_scopes}", params + wanted
        rows = self._file.connection().execute(
            f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE {where} ORDER BY chunk_id", params
        )
        return [_row_to_chunk(row) for row in rows.fetchall()]

    def export(self, *, after_key: str | None = None, size: int = 1000) -> list[Chunk]:
        rows = self._file.connection().execute(
            f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE key > ? ORDER BY key LIMIT ?", (after_key or "", size)
        )
        return [_row_to_chunk(row) for row in rows.fetchall()]

    def count(self) -> int:
        return int(self._file.connection().execute("SELECT count(*) FROM chunks").fetchone()[0])

    def definition(self) -> dict[str, Any]:
        return {
            "kind": "sqlite",
            "schema_version": SCHEMA_VERSION,
            "key": "key",
            "fields": [
                {"name": "key", "type": "text", "key": True},
                {"name": "doc_id", "type": "text", "filterable": True},
                {"name": "chunk_id", "type": "integer", "filterable": True, "sortable": True},
                {"name": "title", "type": "text", "searchable": True, "weight": TITLE_WEIGHT},
                {"name": "url", "type": "text"},
                {"name": "content", "type": "text", "searchable": True, "weight": CONTENT_WEIGHT},
                {"name": "section", "type": "text"},
                {"name": "page", "type": "integer"},
                {"name": "version", "type": "text"},
                {"name": "scope", "type": "text", "filterable": True},
            ],
            "analyzer": "shared.text.tokenize (NFKC lowercase words, CJK character bigrams)",
            "terms": "term ids per chunk row (shared.adapters.local.term_ids), ranked in memory",
            "ranking": f"bm25(title={TITLE_WEIGHT}, content={CONTENT_WEIGHT}), FTS5's formula",
        }

    def reset(self) -> None:
        with self._file.write() as db:
            db.execute("DELETE FROM chunks")  # the vocabulary stays: ids are never reused

    def ping(self) -> None:
        try:
            self._file.connection().execute("SELECT 1 FROM chunks LIMIT 1").fetchall()
        except sqlite3.Error as error:
            raise DependencyUnavailable(f"knowledge index {self.path} is not readable: {error}") from error
