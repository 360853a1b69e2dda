"""The embedded knowledge index: SQLite with an FTS5 table over pre-tokenized text, ranked by BM25.

FTS5's own tokenizers cannot split Japanese, so shared.text.tokenize() does the analysis
(words, CJK bigrams) and FTS5's unicode61 tokenizer only splits that output on the spaces
between tokens. The original text lives in the chunks table; citations and snippets use it.

Queries are ranked by an in-memory mirror of the FTS5 table (shared.adapters.local.ranking),
which computes FTS5's bm25() over the same postings in a fraction of the time. The mirror is
rebuilt whenever the file's write generation (the `generation` row, bumped in every write
transaction by any thread or process) moves past the one it was built at.

Every chunk has a scope (its tenant, or `shared`). A search or read given scopes sees only
those: the mirror ranks only rows in them, and the SQL that reads the rows back filters on the
scope column again, so a hit outside them cannot come back even from a stale mirror.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.adapters.local.ranking import RankingMirror
from shared.adapters.local.sqlite_file import SqliteFile
from shared.contracts import SHARED_SCOPE, Chunk, SearchHit
from shared.errors import DependencyUnavailable
from shared.text import best_snippet, terms, tokenize

log = logging.getLogger("agent.search")

SCHEMA_VERSION = 3
TITLE_WEIGHT = 2.0
CONTENT_WEIGHT = 1.0

_SCHEMA = (
    # An explicit INTEGER PRIMARY KEY, because VACUUM may renumber implicit rowids and the FTS
    # table is joined to chunks by rowid. key is the index key all the same (UNIQUE, upserted on).
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
    scope TEXT NOT NULL DEFAULT 'shared'
    )""",
    "CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks (doc_id, chunk_id)",
    # rowid of chunks_terms = rowid of chunks; its columns hold tokenize() output joined by spaces.
    """CREATE VIRTUAL TABLE IF NOT EXISTS chunks_terms USING fts5 (
    title, content, tokenize = 'unicode61 remove_diacritics 0'
    )""",
    # FTS5 merges its index segments as it writes (automerge: ~15% of its insert CPU). Queries
    # never walk that index (the ranking mirror reads the terms), so merges wait for FTS5's own bound:
    # crisismerge (16 segments on one level) still merges, so the index stays bounded.
    "INSERT INTO chunks_terms (chunks_terms, rank) VALUES ('automerge', 0)",
    # Bumped by every write transaction: the ranking mirror's "am I current?" check, across processes.
    "CREATE TABLE IF NOT EXISTS generation (id INTEGER PRIMARY KEY CHECK (id = 0), value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO generation (id, value) VALUES (0, 0)",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)
# Columns added after schema 1: an index file written before them gains them on open (NULL = unknown).
_ADDED_COLUMNS = (("section", "TEXT"), ("page", "INTEGER"), ("version", "TEXT"))

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


def match_expression(query: str) -> str | None:
    """The FTS5 query for free text: its tokens, each quoted as a literal, ORed; None if it has none.

    Quoting makes user input inert: '"', '*', 'AND', '-x' and column filters are all just text.
    """
    terms = dict.fromkeys(tokenize(query))  # de-duplicated, in query order
    if not terms:
        return None
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)


class LocalKnowledgeIndex:
    """KnowledgeIndex in one SQLite file: WAL, one connection per thread, safe across processes.

    upsert replaces chunks by key. Re-indexing a document that now has fewer chunks leaves the old
    tail in place, so callers replacing a document call delete_document(doc_id) first (as with
    Azure AI Search, whose upload action is also per key).
    """

    def __init__(self, path: Path, *, busy_timeout_seconds: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # FULL: a committed upsert survives power loss, not just a process crash.
        self._file = SqliteFile(
            self.path, "knowledge index", timeout=busy_timeout_seconds, pragmas=("PRAGMA synchronous = FULL",)
        )
        self._mirror: RankingMirror | None = None
        self._mirror_lock = threading.Lock()
        with self._file.write() as db:
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

    # --- connections ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection this index opened (from any thread)."""
        self._file.close()

    # --- KnowledgeIndex ------------------------------------------------------------------------

    def upsert(self, chunks: list[Chunk]) -> int:
        with self._file.write() as db:
            self._upsert(db, chunks)
        return len(chunks)

    @staticmethod
    def _upsert(db: sqlite3.Connection, chunks: list[Chunk]) -> None:
        """Write chunks in bulk: a few executemany calls per batch, not three statements per chunk.

        A chunk whose key is already indexed is replaced: its old rows go first, and it is written
        again under a new rowid (so it ranks as the newest row on a tie, as FTS5 would scan it).
        """
        latest = {chunk.key: chunk for chunk in chunks}  # a key given twice: the last one wins
        if not latest:
            return
        stale = [
            (rowid,)
            for (rowid,) in db.execute(
                "SELECT id FROM chunks WHERE key IN (SELECT value FROM json_each(?))", (json.dumps(list(latest)),)
            )
        ]
        if stale:
            db.executemany("DELETE FROM chunks_terms WHERE rowid = ?", stale)
            db.executemany("DELETE FROM chunks WHERE id = ?", stale)
        (last,) = db.execute("SELECT coalesce(max(id), 0) FROM chunks").fetchone()
        rowids = range(last + 1, last + 1 + len(latest))
        db.executemany(
            """INSERT INTO chunks (id, key, doc_id, chunk_id, title, url, content, section, page, version, scope)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            [
                (rowid, key, c.doc_id, c.chunk_id, c.title, c.url, c.content, c.section, c.page, c.version, c.scope)
                for rowid, (key, c) in zip(rowids, latest.items(), strict=True)
            ],
        )
        db.executemany(
            "INSERT INTO chunks_terms (rowid, title, content) VALUES (?, ?, ?)",
            [(rowid, terms(c.title), terms(c.content)) for rowid, c in zip(rowids, latest.values(), strict=True)],
        )

    @staticmethod
    def _delete(db: sqlite3.Connection, doc_id: str) -> int:
        db.execute("DELETE FROM chunks_terms WHERE rowid IN (SELECT rowid FROM chunks WHERE doc_id = ?)", (doc_id,))
        return int(db.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,)).rowcount)

    def delete_document(self, doc_id: str) -> int:
        with self._file.write() as db:
            return self._delete(db, doc_id)

    def replace_document(self, doc_id: str, chunks: list[Chunk]) -> int:
        """Swap every chunk of doc_id for chunks in one transaction: readers see the old version or the new."""
        with self._file.write() as db:
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
        """The ranking mirror as of the file's latest write, rebuilt from the FTS5 text if it is behind."""
        (generation,) = db.execute("SELECT value FROM generation WHERE id = 0").fetchone()
        mirror = self._mirror
        if mirror is not None and mirror.generation == generation:
            return mirror
        with self._mirror_lock:
            mirror = self._mirror
            if mirror is not None and mirror.generation == generation:
                return mirror
            db.execute("BEGIN")  # one snapshot: the rows and the generation they belong to
            try:
                (generation,) = db.execute("SELECT value FROM generation WHERE id = 0").fetchone()
                rows = db.execute(
                    "SELECT t.rowid, c.doc_id, c.scope, t.title, t.content "
                    "FROM chunks_terms t JOIN chunks c ON c.id = t.rowid"
                ).fetchall()
            finally:
                db.execute("COMMIT")
            self._mirror = RankingMirror(rows, generation, TITLE_WEIGHT, CONTENT_WEIGHT)
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
            "kind": "sqlite-fts5",
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
            "tokenizer": "fts5 unicode61 remove_diacritics 0 over pre-tokenized text",
            "ranking": f"bm25(title={TITLE_WEIGHT}, content={CONTENT_WEIGHT}), FTS5's, computed in memory",
        }

    def reset(self) -> None:
        with self._file.write() as db:
            db.execute("DELETE FROM chunks_terms")
            db.execute("DELETE FROM chunks")

    def ping(self) -> None:
        try:
            self._file.connection().execute("SELECT 1 FROM chunks LIMIT 1").fetchall()
        except sqlite3.Error as error:
            raise DependencyUnavailable(f"knowledge index {self.path} is not readable: {error}") from error
