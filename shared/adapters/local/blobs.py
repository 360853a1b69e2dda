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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from shared.adapters.local.group_commit import GroupCommit
from shared.adapters.local.sqlite_busy import TRY_MS, begin_immediate, fetch, retry
from shared.errors import DependencyUnavailable
from shared.ports import ObjectWrite, PreconditionFailed, StoredObject

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

_UPSERT = (
    "INSERT INTO objects (key, data, etag, modified) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET data = excluded.data, etag = excluded.etag, modified = excluded.modified"
)
_INSERT_IF_ABSENT = "INSERT INTO objects (key, data, etag, modified) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO NOTHING"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    key      TEXT PRIMARY KEY,
    data     BLOB NOT NULL,
    etag     TEXT NOT NULL,
    modified REAL NOT NULL
)
"""


Statement = tuple[str, tuple[object, ...]]


class _Write:
    """One writer's statements waiting for the group commit that runs them.

    They run in order and stop at the first that changes no row (a create-only key that exists, an
    ETag that moved): `rowcounts` has one entry per statement run, so a short or zero-ending list
    says which write did not happen. The statements before it stand, as on Blob Storage.
    """

    __slots__ = ("durable", "statements", "done", "rowcounts", "error")

    def __init__(self, durable: bool, sql: str, params: tuple[object, ...], *more: Statement) -> None:
        self.durable = durable
        self.statements: tuple[Statement, ...] = ((sql, params), *more)
        self.done = threading.Event()
        self.rowcounts: list[int] = []
        self.error: BaseException | None = None

    @property
    def rowcount(self) -> int:
        """The last statement's row count (0 when it stopped the write, or none ran)."""
        return self.rowcounts[-1] if self.rowcounts else 0

    def run(self, conn: sqlite3.Connection) -> None:
        self.rowcounts = []
        for sql, params in self.statements:
            self.rowcounts.append(conn.execute(sql, params).rowcount)
            if self.rowcounts[-1] == 0:
                return


_groups: dict[str, GroupCommit[_Write]] = {}
_groups_guard = threading.Lock()

# A SQLite connection must not cross fork(); bumping this in the child makes every thread reconnect.
_fork_generation = 0


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1
    # A leader in the parent does not exist in the child: start every file's group afresh.
    for group in _groups.values():
        group.reset()


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

    local_reads = True  # a read is an indexed lookup in a local file; WAL readers never wait for writers

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
            self._group = _groups.setdefault(str(self.path.resolve()), GroupCommit())
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
            local.synchronous = self._synchronous  # the mode its next commit has (see _commit)
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

    def _write(self, durable: bool, sql: str, params: tuple[object, ...], *more: Statement) -> int:
        """Run one write statement (or several, see _Write) in the next group commit; the last row count."""
        return self._run(_Write(durable, sql, params, *more)).rowcount

    def _run(self, write: _Write) -> _Write:
        """Queue the write for the next group commit (leading it if none runs) and wait for it."""
        self._group.run(
            write,
            self._commit,
            WRITE_QUEUE_SECONDS,
            lambda: DependencyUnavailable(
                f"embedded object store {self.path}: no write slot within {WRITE_QUEUE_SECONDS}s (storage is stalled)"
            ),
        )
        return write

    def _commit(self, batch: list[_Write]) -> None:
        conn = self._conn()
        # Not durable: WAL frames reach the disk in order, so the next fsync'd commit carries it.
        # The same connection as reads, switched only when a commit needs the other mode than the
        # last one (a second connection would have its page cache reset by every write of the first).
        durable = any(write.durable for write in batch) or self._synchronous == "NORMAL"
        wanted = self._synchronous if durable else "NORMAL"
        if self._local.synchronous != wanted:
            with self._unavailable_on_sqlite_errors():
                conn.execute(f"PRAGMA synchronous={wanted}")
            self._local.synchronous = wanted
        self._commit_on(conn, batch)

    def _commit_on(self, conn: sqlite3.Connection, batch: list[_Write]) -> None:
        with self._unavailable_on_sqlite_errors():
            if len(batch) == 1 and len(batch[0].statements) == 1:
                only = batch[0]
                retry(lambda: only.run(conn), self._busy_timeout)  # one statement: its own transaction
                return
            begin_immediate(conn, self._busy_timeout)
            try:
                for write in batch:
                    write.run(conn)
            except sqlite3.OperationalError:
                conn.execute("ROLLBACK")
                raise  # the database is unavailable: for every write of the batch
            except Exception:
                conn.execute("ROLLBACK")
                # One bad statement must not fail the others: run each write on its own.
                for write in batch:
                    self._commit_alone(conn, write)
                return
            try:
                conn.execute("COMMIT")
            except sqlite3.OperationalError:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _commit_alone(self, conn: sqlite3.Connection, write: _Write) -> None:
        """Commit one write's statements in a transaction of their own; its error is its own."""
        begin_immediate(conn, self._busy_timeout)
        try:
            write.run(conn)
        except sqlite3.OperationalError:
            conn.execute("ROLLBACK")
            raise
        except Exception as exc:  # noqa: BLE001 - that writer's own error
            conn.execute("ROLLBACK")
            write.error = exc
            return
        conn.execute("COMMIT")

    # --- ObjectStore ----------------------------------------------------------------------------

    def get(self, key: str) -> StoredObject | None:
        with self._unavailable_on_sqlite_errors():
            conn = self._conn()
            rows = fetch(conn, "SELECT data, etag, modified FROM objects WHERE key = ?", (key,), self._busy_timeout)
        row = rows[0] if rows else None
        if row is None:
            return None
        return StoredObject(data=row[0], etag=row[1], last_modified=datetime.fromtimestamp(row[2], UTC))

    def exists(self, key: str) -> bool:
        """Cheaper than get: reads the index only, not the data."""
        with self._unavailable_on_sqlite_errors():
            conn = self._conn()
            return bool(fetch(conn, "SELECT 1 FROM objects WHERE key = ?", (key,), self._busy_timeout))

    def put(self, key: str, data: bytes, *, if_match: str | None = None, durable: bool = True) -> str:
        validate_key(key)
        etag = _new_etag()
        if if_match is None:
            self._write(durable, _UPSERT, (key, bytes(data), etag, time.time()))
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
        created = self._write(True, _INSERT_IF_ABSENT, (key, bytes(data), etag, time.time()))
        if created == 0:
            raise PreconditionFailed(f"{key} already exists")
        return etag

    def put_many(self, writes: Sequence[ObjectWrite]) -> list[str]:
        """One fsync'd commit for all the writes (see the port); stops at a create-only key that exists."""
        if not writes:
            return []
        for w in writes:
            validate_key(w.key)
        etags = [_new_etag() for _ in writes]
        now = time.time()
        statements = [
            (_INSERT_IF_ABSENT if w.if_absent else _UPSERT, (w.key, bytes(w.data), etag, now))
            for w, etag in zip(writes, etags, strict=True)
        ]
        done = self._run(_Write(True, *statements[0], *statements[1:])).rowcounts
        if len(done) < len(writes) or done[-1] == 0:
            raise PreconditionFailed(f"{writes[len(done) - 1].key} already exists")
        return etags

    def delete(self, key: str, *, if_match: str | None = None, durable: bool = True) -> bool:
        if if_match is None:
            return self._write(durable, "DELETE FROM objects WHERE key = ?", (key,)) > 0
        if self._write(durable, "DELETE FROM objects WHERE key = ? AND etag = ?", (key, if_match)) > 0:
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
                rows = fetch(conn, page, params, self._busy_timeout)
            for (key,) in rows:
                yield key
            if len(rows) < _LIST_PAGE:
                return
            after = rows[-1][0]

    def ping(self) -> None:
        try:
            conn = self._conn()
            fetch(conn, "SELECT 1 FROM objects LIMIT 1", (), self._busy_timeout)
        except sqlite3.Error as exc:
            raise DependencyUnavailable(f"embedded object store {self.path}: {exc}") from exc
