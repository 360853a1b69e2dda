"""Embedded object store: blob semantics (create-only, If-Match, ETags) in one SQLite file.

Why SQLite rather than one file per object:
- Create-only and If-Match writes are each ONE SQL statement ("INSERT ... ON CONFLICT DO NOTHING",
  "UPDATE ... WHERE etag = ?"), so the check and the write are atomic across threads and processes
  under SQLite's own write lock: no lock files, no read-compare-replace window.
- A reader never sees a torn object: readers see committed transactions only, and a process killed
  with SIGKILL mid-write leaves an uncommitted WAL tail that SQLite discards on next open.
- Blob names may be both "a/b" and "a/b/c" (a file system cannot hold a file and a directory of the
  same name), need no escaping, and list(prefix) is an index range scan instead of a directory walk.
- WAL with synchronous=FULL (the default) fsyncs the WAL on every commit, so a committed step
  survives an OS crash or power cut. synchronous="NORMAL" (EMBEDDED_SYNCHRONOUS) skips that fsync:
  still durable across process crashes (kill -9), but a power cut may lose the last commits (never
  tear one). synchronous=OFF can corrupt the file on an OS crash and is not offered. A write with
  durable=False (a projection a later write repairs) commits without its own fsync: WAL frames
  reach the disk in order, so the next fsync'd commit carries it too.
Limit: SQLite caps one value at ~1 GB, far above anything the app stores (checkpoints, job records,
reports, index backups).
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from shared.adapters.local.sqlite_busy import TRY_MS, retry
from shared.errors import DependencyUnavailable
from shared.ports import PreconditionFailed, StoredObject

DB_FILE = "objects.sqlite3"

# How long a write waits for the database before it fails with DependencyUnavailable. Writes take
# milliseconds; a lock held longer than this means another process is stuck or the disk is, and a
# caller is better told "unavailable, retry" at once than held for SQLite's default 5 s or more.
BUSY_TIMEOUT_SECONDS = 0.3
# How long a writer queues behind this process's other writers (each bounded by the busy timeout).
WRITE_QUEUE_SECONDS = 0.5

# The same naming rules Azure enforces, so a key that works here works against Blob Storage.
_CONTAINER_RE = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_MAX_BLOB_NAME = 1024
_LIST_PAGE = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    key      TEXT PRIMARY KEY,
    data     BLOB NOT NULL,
    etag     TEXT NOT NULL,
    modified REAL NOT NULL
)
"""


class _Write:
    """One statement waiting for the group commit that runs it."""

    __slots__ = ("durable", "sql", "params", "done", "rowcount", "error")

    def __init__(self, durable: bool, sql: str, params: tuple[object, ...]) -> None:
        self.durable = durable
        self.sql = sql
        self.params = params
        self.done = threading.Event()
        self.rowcount = 0
        self.error: BaseException | None = None


class _GroupCommit:
    """The writers of one database file in this process: whoever finds no commit running leads one.

    Same-process writers queue here instead of on SQLite's busy handler (which sleeps in 1-100 ms
    steps); other processes still meet SQLite's lock. The leader runs every waiting statement in one
    transaction, with one fsync if any of them must be durable, and leads again for the writes that
    arrived meanwhile: with several workers, their checkpoints share an fsync (group commit).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: list[_Write] = []
        self.leading = False


_groups: dict[str, _GroupCommit] = {}
_groups_guard = threading.Lock()

# A SQLite connection must not cross fork(); bumping this in the child makes every thread reconnect.
_fork_generation = 0


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1
    # A leader in the parent does not exist in the child: start every file's group afresh.
    for group in _groups.values():
        group.__init__()  # type: ignore[misc]


os.register_at_fork(after_in_child=_after_fork_in_child)


def validate_key(key: str) -> None:
    """Raise ValueError unless key is "container/name" with an Azure-valid container and name."""
    container, sep, name = key.partition("/")
    if not sep or not _CONTAINER_RE.match(container):
        raise ValueError(f"object key {key!r} must start with a container (3-63 of a-z, 0-9, '-') and '/'")
    if not name or len(name) > _MAX_BLOB_NAME:
        raise ValueError(f"object key {key!r} needs a blob name of 1-{_MAX_BLOB_NAME} characters after the container")


def _new_etag() -> str:
    # Random, not a counter: a key deleted and re-created must never get back an ETag a stale
    # reader still holds.
    return os.urandom(12).hex()


def _prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with prefix (None: no bound)."""
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if 0xD800 <= code <= 0xDFFF:  # surrogates cannot be stored as UTF-8; skip past them
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None


class LocalObjectStore:
    """ObjectStore over one SQLite database under root; safe to share across threads and processes."""

    def __init__(
        self, root: Path, *, busy_timeout_seconds: float = BUSY_TIMEOUT_SECONDS, synchronous: str = "FULL"
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / DB_FILE
        self._busy_timeout = busy_timeout_seconds
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self._synchronous = synchronous
        self._local = threading.local()
        with _groups_guard:
            self._group = _groups.setdefault(str(self.path.resolve()), _GroupCommit())
        with self._unavailable_on_sqlite_errors():
            conn = self._conn()
            retry(lambda: conn.execute("PRAGMA journal_mode=WAL"), self._busy_timeout)
            retry(lambda: conn.execute(_SCHEMA), self._busy_timeout)

    # --- connections ----------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        # One connection per thread: WAL lets readers run in parallel with each other and a writer.
        local = self._local
        if getattr(local, "generation", None) != _fork_generation:
            # A short busy timeout: the wait for another process's lock is retry()'s (see sqlite_busy).
            conn = sqlite3.connect(self.path, timeout=TRY_MS / 1000, isolation_level=None)
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            # Large blobs grow the WAL; give the space back after each checkpoint.
            conn.execute("PRAGMA journal_size_limit=67108864")
            local.conn = conn
            local.generation = _fork_generation
        conn_: sqlite3.Connection = local.conn
        return conn_

    def close(self) -> None:
        """Close this thread's connection (other threads' connections close when those threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.generation == _fork_generation:
            conn.close()
        self._local.__dict__.clear()

    @contextmanager
    def _unavailable_on_sqlite_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            # "database is locked" past the busy timeout (another process holds the lock far too long),
            # "database or disk is full", an unreadable file: nothing was written, the caller may retry.
            raise DependencyUnavailable(f"embedded object store {self.path}: {exc}") from exc

    def _write(self, durable: bool, sql: str, params: tuple[object, ...]) -> int:
        """Run one write statement in the next group commit; its row count."""
        write = _Write(durable, sql, params)
        group = self._group
        with group.lock:
            group.pending.append(write)
            lead = not group.leading
            group.leading = True
        if lead:
            self._lead(group)
        elif not write.done.wait(WRITE_QUEUE_SECONDS):
            with group.lock:
                queued = write in group.pending
                if queued:
                    group.pending.remove(write)
            if queued:
                # Bounded: behind a stuck writer, every other writer of this process would queue without end.
                raise DependencyUnavailable(
                    f"embedded object store {self.path}: no write slot within {WRITE_QUEUE_SECONDS}s "
                    "(storage is stalled)"
                )
            write.done.wait()  # taken by a commit under way, itself bounded by the busy timeout
        if write.error is not None:
            raise write.error
        return write.rowcount

    def _lead(self, group: _GroupCommit) -> None:
        """Commit batches of waiting writes until none is left, then stop leading."""
        while True:
            with group.lock:
                batch, group.pending = group.pending, []
                if not batch:
                    group.leading = False
                    return
            try:
                self._commit(batch)
            except BaseException as exc:  # noqa: BLE001 - told to each writer of the batch, who raises it
                for write in batch:
                    write.error = exc
            finally:
                for write in batch:
                    write.done.set()

    def _commit(self, batch: list[_Write]) -> None:
        conn = self._conn()
        if any(write.durable for write in batch) or self._synchronous == "NORMAL":
            self._commit_on(conn, batch)
            return
        # Not durable: WAL frames reach the disk in order, so the next fsync'd commit carries it.
        # The same connection as reads, switched for this commit: a second one would have its page
        # cache reset by every write of the first.
        with self._unavailable_on_sqlite_errors():
            conn.execute("PRAGMA synchronous=NORMAL")
        try:
            self._commit_on(conn, batch)
        finally:
            with self._unavailable_on_sqlite_errors():
                conn.execute(f"PRAGMA synchronous={self._synchronous}")

    def _commit_on(self, conn: sqlite3.Connection, batch: list[_Write]) -> None:
        with self._unavailable_on_sqlite_errors():
            if len(batch) == 1:
                only = batch[0]
                only.rowcount = retry(lambda: conn.execute(only.sql, only.params).rowcount, self._busy_timeout)
                return
            retry(lambda: conn.execute("BEGIN IMMEDIATE"), self._busy_timeout)
            try:
                for write in batch:
                    write.rowcount = conn.execute(write.sql, write.params).rowcount
            except sqlite3.OperationalError:
                conn.execute("ROLLBACK")
                raise  # the database is unavailable: for every write of the batch
            except Exception:
                conn.execute("ROLLBACK")
                # One bad statement must not fail the others: run each on its own.
                for write in batch:
                    try:
                        write.rowcount = retry(
                            lambda w=write: conn.execute(w.sql, w.params).rowcount,  # type: ignore[misc]
                            self._busy_timeout,
                        )
                    except sqlite3.OperationalError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - that writer's own error
                        write.error = exc
                return
            try:
                conn.execute("COMMIT")
            except sqlite3.OperationalError:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    # --- ObjectStore ----------------------------------------------------------------------------

    def get(self, key: str) -> StoredObject | None:
        with self._unavailable_on_sqlite_errors():
            conn = self._conn()
            row = retry(
                lambda: conn.execute("SELECT data, etag, modified FROM objects WHERE key = ?", (key,)).fetchone(),
                self._busy_timeout,
            )
        if row is None:
            return None
        return StoredObject(data=row[0], etag=row[1], last_modified=datetime.fromtimestamp(row[2], UTC))

    def exists(self, key: str) -> bool:
        """Cheaper than get: reads the index only, not the data."""
        with self._unavailable_on_sqlite_errors():
            conn = self._conn()
            exists = "SELECT 1 FROM objects WHERE key = ?"
            return retry(lambda: conn.execute(exists, (key,)).fetchone(), self._busy_timeout) is not None

    def put(self, key: str, data: bytes, *, if_match: str | None = None, durable: bool = True) -> str:
        validate_key(key)
        etag = _new_etag()
        if if_match is None:
            self._write(
                durable,
                "INSERT INTO objects (key, data, etag, modified) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET data = excluded.data, etag = excluded.etag, "
                "modified = excluded.modified",
                (key, bytes(data), etag, time.time()),
            )
            return etag
        changed = self._write(
            durable,
            "UPDATE objects SET data = ?, etag = ?, modified = ? WHERE key = ? AND etag = ?",
            (bytes(data), etag, time.time(), key, if_match),
        )
        if changed == 0:
            raise PreconditionFailed(f"{key}: ETag {if_match} no longer current (changed or deleted)")
        return etag

    def put_if_absent(self, key: str, data: bytes) -> str:
        validate_key(key)
        etag = _new_etag()
        created = self._write(
            True,
            "INSERT INTO objects (key, data, etag, modified) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
            (key, bytes(data), etag, time.time()),
        )
        if created == 0:
            raise PreconditionFailed(f"{key} already exists")
        return etag

    def delete(self, key: str, *, if_match: str | None = None) -> bool:
        if if_match is None:
            return self._write(True, "DELETE FROM objects WHERE key = ?", (key,)) > 0
        if self._write(True, "DELETE FROM objects WHERE key = ? AND etag = ?", (key, if_match)) > 0:
            return True
        # Nothing deleted: either the key is gone (False, as without if_match) or it has another ETag.
        if self.exists(key):
            raise PreconditionFailed(f"{key}: ETag {if_match} no longer current")
        return False

    def list(self, prefix: str) -> Iterator[str]:
        # Pages by key rather than one open cursor: the caller may delete or write while iterating
        # (retention does), which must not run inside a long-lived read transaction.
        upper = _prefix_upper_bound(prefix)
        conn = self._conn()
        after: str | None = None
        while True:
            lower_sql, lower = ("key > ?", after) if after is not None else ("key >= ?", prefix)
            sql = f"SELECT key FROM objects WHERE {lower_sql}"
            params: tuple[str, ...] = (lower,)
            if upper is not None:
                sql += " AND key < ?"
                params += (upper,)
            with self._unavailable_on_sqlite_errors():
                page = f"{sql} ORDER BY key LIMIT {_LIST_PAGE}"
                rows = retry(lambda q=page, p=params: conn.execute(q, p).fetchall(), self._busy_timeout)  # type: ignore[misc]
            for (key,) in rows:
                yield key
            if len(rows) < _LIST_PAGE:
                return
            after = rows[-1][0]

    def ping(self) -> None:
        try:
            conn = self._conn()
            retry(lambda: conn.execute("SELECT 1 FROM objects LIMIT 1").fetchall(), self._busy_timeout)
        except sqlite3.Error as exc:
            raise DependencyUnavailable(f"embedded object store {self.path}: {exc}") from exc
