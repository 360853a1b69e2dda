"""FTS5's own bm25() over an embedded index's terms: the reference its ranking mirror is held to.

The index no longer writes an FTS5 table (shared.adapters.local.search). The contract tests and
bench/search.py build one beside the chunks, from the very terms the mirror ranks (each row's term
ids written back as text), and compare the mirror's ranking, scores and speed with FTS5's.
"""

from __future__ import annotations

import sqlite3

import numpy as np

from shared.adapters.local.term_ids import ID_TYPE, read_vocabulary
from shared.text import tokenize

TABLE = "reference_terms"


def match_expression(query: str) -> str | None:
    """The FTS5 query for free text: its tokens, each quoted as a literal, ORed; None if it has none.

    Quoting makes user input inert: '"', '*', 'AND', '-x' and column filters are all just text.
    """
    terms = dict.fromkeys(tokenize(query))  # de-duplicated, in query order
    if not terms:
        return None
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)


def build(db: sqlite3.Connection) -> None:
    """(Re)create the FTS5 table `reference_terms` in the index file db: rowid = chunks.id, its terms as text."""
    vocabulary = read_vocabulary(db)

    def text(packed: bytes) -> str:
        return " ".join(vocabulary[i] for i in np.frombuffer(packed, dtype=ID_TYPE).tolist())

    db.execute(f"DROP TABLE IF EXISTS {TABLE}")
    db.execute(f"CREATE VIRTUAL TABLE {TABLE} USING fts5 (title, content, tokenize = 'unicode61 remove_diacritics 0')")
    rows = db.execute("SELECT id, title_terms, content_terms FROM chunks").fetchall()
    db.executemany(
        f"INSERT INTO {TABLE} (rowid, title, content) VALUES (?, ?, ?)",
        [(rowid, text(title), text(content)) for rowid, title, content in rows],
    )


def top(
    db: sqlite3.Connection, query: str, n: int, title_weight: float, content_weight: float
) -> list[tuple[str, int, str, float]]:
    """(doc_id, chunk_id, content, bm25) of FTS5's best n for query, best first (bm25: lower is better).

    Ranked inside FTS5, then the winners read back from chunks: what the index did before its mirror.
    """
    expression = match_expression(query)
    if expression is None:
        return []
    sql = f"""SELECT c.doc_id, c.chunk_id, c.content, best.rank
              FROM (SELECT rowid, bm25({TABLE}, {title_weight}, {content_weight}) AS rank
                    FROM {TABLE} WHERE {TABLE} MATCH ? ORDER BY rank, rowid LIMIT ?) AS best
              JOIN chunks c ON c.id = best.rowid ORDER BY best.rank, c.id"""
    return db.execute(sql, (expression, n)).fetchall()
