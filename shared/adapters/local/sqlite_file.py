"""One SQLite file shared by threads and processes: the embedded index's and the vector index's.

sqlite3 connections must not be shared between threads, so each thread opens its own (WAL, so
readers never wait for the writer); close() closes them all, whichever thread opened them. Every
write transaction also bumps the file's `generation` row, which is how each process learns that
its in-memory copy of the file (the ranking mirror, the vector snapshot) is stale.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from shared.errors import DependencyUnavailable

__all__ = ["SqliteFile"]


class SqliteFile:
    """Connections to one SQLite file, one per thread; `what` names it in errors ("knowledge index")."""

    def __init__(
        self, path: Path, what: str, *, timeout: float, pragmas: Sequence[str] = (), page_size: int | None = None
    ) -> None:
        """page_size: of a file this creates (SQLite fixes it when the file is created; later it is a no-op)."""
        self.path = path
        self.what = what
        self._timeout = timeout
        first = () if page_size is None else (f"PRAGMA page_size = {int(page_size)}",)
        self._pragmas = (*first, "PRAGMA journal_mode = WAL", *pragmas)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use; DependencyUnavailable when the file cannot be."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False)
                for pragma in self._pragmas:
                    db.execute(pragma)
            except sqlite3.Error as error:
                raise DependencyUnavailable(f"{self.what} {self.path} cannot be opened: {error}") from error
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that bumps the generation; IMMEDIATE takes the lock up front, so writers queue."""
        db = self.connection()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:  # still locked after the busy timeout
            raise DependencyUnavailable(f"{self.what} {self.path} is busy: {error}") from error
        try:
            yield db
            db.execute("UPDATE generation SET value = value + 1 WHERE id = 0")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close every connection opened (from any thread); the next use opens new ones."""
        with self._lock:
            connections, self._connections = self._connections, []
        for db in connections:
            db.close()
        self._local = threading.local()
