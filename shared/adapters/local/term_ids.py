"""The embedded index's vocabulary: every analysed term gets a small integer id, kept in the index file.

A chunk's terms are stored as its term ids packed into a blob (4 bytes each, little-endian), and
the ranking mirror is built from those blobs with numpy alone: no text to split, no term to look up
per token. Ingest writes the blob by whitespace pieces of the NFKC text ("handled?", "復元手順は？"):
whitespace is in neither token class of shared.text, so no token spans two pieces, and each piece's
ids are the ids of tokenize(piece). A short piece (a word with its punctuation) repeats across a
corpus, so its packed ids are remembered; a chunk then costs a split and one dict lookup per piece.

Ids are only ever added, never renumbered or reused (reset() keeps the vocabulary), so remembered
ids stay true for as long as the file exists; a write first reads the ids other processes added.
"""

from __future__ import annotations

import sqlite3
import unicodedata
from array import array
from collections.abc import Iterable

from shared.text import tokenize

ID_TYPE = "<u4"  # numpy's name for how ids are packed: what array("I") writes on the platforms we run on
ID_BYTES = 4
_MAX_REMEMBERED_PIECE = 32
_MAX_REMEMBERED_PIECES = 200_000  # a few tens of MB at most, then forgotten

SCHEMA = "CREATE TABLE IF NOT EXISTS terms (id INTEGER PRIMARY KEY, term TEXT NOT NULL UNIQUE)"

if array("I").itemsize != 4 or array("I", [1]).tobytes() != b"\x01\x00\x00\x00":
    raise ImportError("term ids are packed as 4-byte little-endian integers; this platform's array('I') is not")


class Vocabulary:
    """term -> id for one index file, as the writer sees it; used only inside a write transaction.

    Terms first seen in a transaction are inserted in it; if it rolls back, forget() drops everything
    held in memory (ids handed out may not exist), and the next write reads the file's vocabulary again.
    """

    def __init__(self) -> None:
        self._new: list[tuple[int, str]] = []
        self._ids = _Ids(self._new)
        self._pieces = _Pieces(self)

    def forget(self) -> None:
        self._new.clear()
        self._ids, self._pieces = _Ids(self._new), _Pieces(self)

    def begin(self, db: sqlite3.Connection) -> None:
        """Catch up with the ids written by others (the caller holds the file's write lock)."""
        self._new.clear()
        for term_id, term in db.execute("SELECT id, term FROM terms WHERE id >= ? ORDER BY id", (len(self._ids),)):
            self._ids[term] = term_id

    def flush(self, db: sqlite3.Connection) -> None:
        """Insert the terms first seen since begin(), in the same transaction as the chunks using them."""
        if self._new:
            db.executemany("INSERT INTO terms (id, term) VALUES (?, ?)", self._new)
            self._new.clear()

    def terms(self) -> list[str]:
        """id -> term, as this writer knows them (ids are handed out in order, so the dict is in id order)."""
        return list(self._ids)

    def encode(self, text: str) -> bytes:
        """tokenize(text)'s term ids, packed."""
        return b"".join(map(self._pieces.__getitem__, unicodedata.normalize("NFKC", text).split()))

    def encode_tokens(self, tokens: Iterable[str]) -> bytes:
        """The given tokens' ids, packed (migrating terms an older index stored as text)."""
        return array("I", map(self._ids.__getitem__, tokens)).tobytes()


class _Ids(dict[str, int]):
    """Term -> id; a term not seen before takes the next id and is noted in `new`, for flush()."""

    def __init__(self, new: list[tuple[int, str]]) -> None:
        super().__init__()
        self._new = new

    def __missing__(self, term: str) -> int:
        term_id = self[term] = len(self)
        self._new.append((term_id, term))
        return term_id


class _Pieces(dict[str, bytes]):
    """Piece -> its packed ids; a dict, so that a piece seen before costs one lookup in C (map(__getitem__))."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        super().__init__()
        self._vocabulary = vocabulary

    def __missing__(self, piece: str) -> bytes:
        packed = self._vocabulary.encode_tokens(tokenize(piece))
        if len(piece) <= _MAX_REMEMBERED_PIECE:
            if len(self) >= _MAX_REMEMBERED_PIECES:
                self.clear()
            self[piece] = packed
        return packed


def read_vocabulary(db: sqlite3.Connection) -> list[str]:
    """id -> term, as a list indexed by id (ids are dense: they are handed out in order, never reused)."""
    return [term for (term,) in db.execute("SELECT term FROM terms ORDER BY id")]
