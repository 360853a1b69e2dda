"""Waiting for another process's write lock on a shared SQLite file: even, short tries.

SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms between tries.
When two processes write one file (the API's submits and the steps' runtime, on one DATA_DIR), the
one that commits back to back (a group commit leader with more writes waiting) frees the lock for
moments only, and a waiter sleeping 25-100 ms at a time misses each of them: measured under
overload, a submit failed with "database is locked" after 300 ms while the steps' runtime committed
all along. So connections are opened with TRY_MS, which makes SQLite try at once, after 1 ms and
after 3 ms (its first sleeps, without the GIL), and retry() repeats that until the caller's
deadline: a try every few milliseconds, however long the wait.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# The connection's busy_timeout: SQLite tries at 0, 1 and 3 ms, then returns SQLITE_BUSY to retry().
TRY_MS = 3


def retry(attempt: Callable[[], T], timeout_seconds: float) -> T:
    """attempt(), tried again while the database is locked by another connection, up to timeout_seconds.

    attempt must take its lock first and change nothing before it has it (a single statement, or
    BEGIN IMMEDIATE): a statement that fails with SQLITE_BUSY did nothing, so trying again is safe.
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            return attempt()
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", sqlite3.SQLITE_BUSY) & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            if time.monotonic() >= deadline:
                raise


def fetch(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...], timeout_seconds: float) -> list[Any]:
    """The rows of one read, tried again while another connection holds the lock (see retry)."""
    return retry(lambda: conn.execute(sql, params).fetchall(), timeout_seconds)


def begin_immediate(conn: sqlite3.Connection, timeout_seconds: float) -> None:
    """Open a write transaction, waiting for the write lock as retry() does."""
    retry(lambda: conn.execute("BEGIN IMMEDIATE"), timeout_seconds)
