"""The embedded step queue: Service Bus queue semantics in one SQLite file.

What it copies from Service Bus, so the step engine means the same thing in both worlds:
peek-lock with a lock duration, delivery count (1 on the first delivery), max delivery
count then the dead-letter sub-queue with reason "MaxDeliveryCountExceeded", scheduled
enqueue, message-id duplicate detection within a window, and abandon = visible again at once.
One addition for fairness under overload: a message sent with continuation=True (a later step of a
job already started) is received before any first step that is due, so started jobs finish while
new ones wait in `queued`; Azure gets the same order from a second queue (see the Service Bus adapter).

Storage: one SQLite file may hold several named queues (rows carry the queue name); each
LocalQueue object works one of them. WAL with synchronous=FULL (the default) fsyncs every commit,
so a sent message survives an OS crash; synchronous="NORMAL" survives kill -9 of any process
(only an OS crash or power loss can drop the last commits). Only a send (and a dead-letter) must
survive an OS crash; claims, lock renewals and completions commit without their own fsync: WAL
frames reach the disk in order, so the next fsync'd commit covers them, and losing one to an OS
crash only means a redelivery, which every handler takes (at-least-once). The same holds for the
sends a handler made, committed with its message's completion (collecting_sends): until that
transaction lands, the message itself stays, and its redelivery sends again. Sends that must be
fsync'd share it: the sends of several threads that arrive while one commits go together in the
next transaction (group commit), so concurrent submits pay one fsync between them. Like any WAL database it
needs a local disk, not a network share. Several threads and several processes on one machine
may share a file: claims run in short BEGIN IMMEDIATE transactions, and a lock is a token plus
an expiry time, so a consumer that dies simply lets its lock run out and the message is
redelivered. Dead-lettered messages stay in the same table, flagged, until completed or purged.

Wake-ups: send() and abandon() notify a Condition shared by every LocalQueue on the same
file and queue in this process, so a blocked receive() wakes at once. A blocked receive
also wakes by itself when the next scheduled message or lock expiry is due, and polls every
200 ms for sends from other processes, which cannot reach our Condition.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.adapters.local.group_commit import GroupCommit
from shared.adapters.local.sqlite_busy import TRY_MS, begin_immediate, fetch, retry
from shared.contracts import MAX_DELIVERY_COUNT_EXCEEDED
from shared.errors import DependencyUnavailable
from shared.ports import QueueCounts, QueueMessage

log = logging.getLogger("agent." + __name__.rsplit(".", 1)[-1])


# Only sends from another process need this; in-process sends notify the Condition.
_CROSS_PROCESS_POLL_SECONDS = 0.2
# A claim or settle takes milliseconds; a database locked longer than this is an outage, and the
# caller (a worker, an API request) is told so at once (DependencyUnavailable) instead of waiting.
# The wait is retry()'s, a try every few ms; the connections' own busy timeout is short (sqlite_busy).
_BUSY_TIMEOUT_SECONDS = 0.3
# How long a caller queues behind this process's other users of the file (each bounded as above).
_ACCESS_WAIT_SECONDS = 0.5
_PRUNE_IDS_EVERY_SECONDS = 60.0

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        message_id TEXT NOT NULL,
        body BLOB NOT NULL,
        enqueued_at REAL NOT NULL,      -- when it became (or becomes) active: max(send time, scheduled time)
        scheduled_at REAL,              -- the requested scheduled enqueue time, if any
        visible_at REAL NOT NULL,       -- receivable once this passes: enqueue time, then lock expiry
        delivery_count INTEGER NOT NULL DEFAULT 0,
        lock_token TEXT,
        locked_until REAL,
        dead_lettered INTEGER NOT NULL DEFAULT 0,
        dead_letter_reason TEXT,
        dead_letter_description TEXT,
        dead_lettered_at REAL,
        priority INTEGER NOT NULL DEFAULT 0  -- 1: a continuation step, received before first steps (0)
    )""",
    # Receive order is oldest enqueue first. Scheduled messages sort after everything due, so a
    # claim only steps over the few locked messages, however many retries are scheduled.
    "CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, dead_lettered, enqueued_at, seq)",
    # Live receives take one priority at a time, highest first, each in the same oldest-first order.
    "CREATE INDEX IF NOT EXISTS messages_ready_by_priority "
    "ON messages (queue, dead_lettered, priority, enqueued_at, seq)",
    "CREATE INDEX IF NOT EXISTS messages_due ON messages (queue, dead_lettered, visible_at)",
    """CREATE TABLE IF NOT EXISTS message_ids (
        queue TEXT NOT NULL,
        message_id TEXT NOT NULL,
        sent_at REAL NOT NULL,
        PRIMARY KEY (queue, message_id)
    ) WITHOUT ROWID""",
)

_COLUMNS = (
    "seq, message_id, body, enqueued_at, scheduled_at, delivery_count, lock_token, "
    "dead_letter_reason, dead_letter_description"
)

# Receive order of live messages: continuations first, then first steps.
_PRIORITIES = (1, 0)

# Service Bus words its own MaxDeliveryCountExceeded description the same way.
_EXHAUSTED_DESCRIPTION = "'Message could not be consumed after ' || delivery_count || ' delivery attempts.'"


@dataclass(frozen=True)
class PendingSend:
    """A send held by collecting_sends() until the settle of the message in hand commits it."""

    body: bytes
    message_id: str
    scheduled_at: datetime | None = None
    continuation: bool = False


# Per thread: the sends held for each (file, queue) while a handler runs (collecting_sends).
_collecting = threading.local()


class MessageLockLost(Exception):
    """The lock on a message expired or another consumer holds it now; the settle did not happen."""


# Every LocalQueue on one file and queue in this process shares a Condition, so a producer
# and a consumer built separately (API and runtime) still wake each other without polling.
_wakeups: weakref.WeakValueDictionary[tuple[str, str], threading.Condition] = weakref.WeakValueDictionary()
_wakeups_guard = threading.Lock()


class _WaitingSends:
    """One caller's sends waiting for the group commit that writes them."""

    __slots__ = ("queue", "sends", "done", "error")

    def __init__(self, queue: LocalQueue, sends: tuple[PendingSend, ...]) -> None:
        self.queue = queue
        self.sends = sends
        self.done = threading.Event()
        self.error: BaseException | None = None


_send_groups: dict[tuple[str, str], GroupCommit[_WaitingSends]] = {}


def _send_group(key: tuple[str, str]) -> GroupCommit[_WaitingSends]:
    with _wakeups_guard:
        return _send_groups.setdefault(key, GroupCommit())


def _reset_send_groups_in_child() -> None:
    # A leader in the parent does not exist in a forked child: start every group afresh.
    for group in _send_groups.values():
        group.reset()


os.register_at_fork(after_in_child=_reset_send_groups_in_child)


def _shared_wakeup(path: Path, name: str) -> threading.Condition:
    key = (str(path.resolve()), name)
    with _wakeups_guard:
        condition = _wakeups.get(key)
        if condition is None:
            condition = threading.Condition()
            _wakeups[key] = condition
        return condition


def _epoch(moment: datetime) -> float:
    """Seconds since the epoch; a naive datetime is taken as UTC, as the Service Bus adapter does too."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _utc(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def _message(row: tuple[Any, ...]) -> QueueMessage:
    seq, message_id, body, enqueued_at, scheduled_at, delivery_count, lock_token, reason, description = row
    return QueueMessage(
        message_id=message_id,
        body=bytes(body),
        sequence_number=seq,
        delivery_count=delivery_count,
        enqueued_at=_utc(enqueued_at),
        scheduled_at=_utc(scheduled_at),
        dead_letter_reason=reason,
        dead_letter_description=description,
        lock_token=lock_token,
    )


class LocalQueue:
    """A durable queue with Service Bus semantics: the StepQueue port plus the consumer side."""

    def __init__(
        self,
        path: Path,
        name: str = "agent-jobs",
        *,
        lock_seconds: float = 60.0,
        max_delivery_count: int = 10,
        duplicate_window_seconds: float = 600.0,
        synchronous: str = "FULL",
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        if max_delivery_count < 1:
            raise ValueError("max_delivery_count must be at least 1")
        self.path = Path(path)
        self.name = name
        self.lock_seconds = lock_seconds
        self.max_delivery_count = max_delivery_count
        self.duplicate_window_seconds = duplicate_window_seconds
        self._synchronous = synchronous
        self._wakeup = _shared_wakeup(self.path, name)
        self._key = (str(self.path.resolve()), name)
        self._sends = _send_group(self._key)
        self._last_prune = 0.0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._unavailable_on_sqlite_errors():
            # Access is serialised by the Condition's lock, so one connection serves every thread.
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
            self._conn.execute(f"PRAGMA busy_timeout = {TRY_MS}")
            conn0 = self._conn
            retry(lambda: conn0.execute("PRAGMA journal_mode = WAL"), _BUSY_TIMEOUT_SECONDS)
            self._conn.execute(f"PRAGMA synchronous = {synchronous}")
            # A second connection for the commits that need no fsync of their own (claims, renewals,
            # completions), so they cost no PRAGMA switch each; _without_fsync selects it.
            self._lazy_conn: sqlite3.Connection | None = None
            if synchronous != "NORMAL":
                self._lazy_conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                self._lazy_conn.execute(f"PRAGMA busy_timeout = {TRY_MS}")
                self._lazy_conn.execute("PRAGMA synchronous = NORMAL")
            self._lazy = False
            with self._held(), self._transaction() as conn:
                # Not executescript: it commits on its own, and the schema should appear all at once.
                columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
                if columns and "priority" not in columns:
                    # A file from before priorities: every waiting message counts as a first step.
                    conn.execute("ALTER TABLE messages ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")
                for statement in _SCHEMA:
                    conn.execute(statement)

    # --- the StepQueue port ---------------------------------------------------------------------

    def send(
        self, body: bytes, *, message_id: str, scheduled_at: datetime | None = None, continuation: bool = False
    ) -> None:
        """Enqueue; a message_id seen within the duplicate-detection window is dropped silently.

        continuation: a later step of a started job; receive() prefers it over every due first step.
        Inside collecting_sends() on this thread, the send is held and commits with complete() instead.
        """
        pending = PendingSend(body, message_id, scheduled_at, continuation)
        held = getattr(_collecting, "outboxes", {}).get(self._key)
        if held is not None:
            held.append(pending)
            return
        self.send_all([pending])

    def send_all(self, sends: Sequence[PendingSend]) -> None:
        """Enqueue several messages in one fsync'd transaction (each as send() would).

        Group commit: sends that arrive while another thread of this process commits go together in
        the next transaction, with one fsync for all of them. Each caller returns once its own sends
        are on disk, and a failed transaction fails every caller in it (none of their sends happened).
        """
        if not sends:
            return
        # The fsync'd senders of one file and queue in this process share commits (see group_commit):
        # without it, concurrent submits each wait for the file and then for their own fsync.
        self._sends.run(
            _WaitingSends(self, tuple(sends)),
            self._commit_sends,
            _ACCESS_WAIT_SECONDS,
            lambda: DependencyUnavailable(
                f"embedded queue {self.path} ({self.name}): no send slot within {_ACCESS_WAIT_SECONDS}s (stalled)"
            ),
        )

    def _commit_sends(self, batch: list[_WaitingSends]) -> None:
        with self._held():
            scheduled = False
            with self._transaction() as conn:
                for waiting in batch:
                    # Each sender's own queue object: its duplicate window and prune clock.
                    scheduled = waiting.queue._insert(conn, waiting.sends) or scheduled
            self._notify(scheduled, sum(len(waiting.sends) for waiting in batch))

    @contextmanager
    def collecting_sends(self) -> Iterator[list[PendingSend]]:
        """Hold this thread's sends to this queue, to commit them with the settle of the message in hand.

        The output binding of the embedded runtime: complete(message, sends=...) commits the held
        sends and the completion in one transaction, which needs no fsync of its own. Lost to an OS
        crash, both are lost: the message in hand is delivered again and its handler (idempotent, as
        every handler is) sends again. Any LocalQueue on the same file and queue collects alike.
        """
        outboxes: dict[tuple[str, str], list[PendingSend]] = _collecting.__dict__.setdefault("outboxes", {})
        if self._key in outboxes:
            raise RuntimeError(f"already collecting sends to queue {self.name!r} on this thread")
        held: list[PendingSend] = []
        outboxes[self._key] = held
        try:
            yield held
        finally:
            del outboxes[self._key]

    def counts(self) -> QueueCounts:
        now = time.time()
        with self._held(), self._unavailable_on_sqlite_errors():
            conn = self._connection()
            ((active, scheduled, dead),) = fetch(
                conn,
                "SELECT "
                "  COALESCE(SUM(dead_lettered = 0 AND enqueued_at <= ?), 0), "
                "  COALESCE(SUM(dead_lettered = 0 AND enqueued_at > ?), 0), "
                "  COALESCE(SUM(dead_lettered = 1), 0) "
                "FROM messages WHERE queue = ?",
                (now, now, self.name),
                _BUSY_TIMEOUT_SECONDS,
            )
        return QueueCounts(active=active, scheduled=scheduled, dead_lettered=dead)

    def peek_dead_letters(self, max_count: int = 100) -> list[QueueMessage]:
        return self._peek(max_count, dead_lettered=True)

    def receive_dead_letters(self, max_count: int = 100, lock_seconds: float = 60.0) -> list[QueueMessage]:
        """Lock dead-lettered messages for settling; unsettled ones unlock after lock_seconds.

        Unlike Service Bus, this leaves delivery_count alone: it keeps saying how often the
        step was tried before it was dead-lettered, which is what the sweep reports.
        """
        with self._held():
            return self._claim(time.time(), max_count, dead_lettered=True, lock_seconds=lock_seconds)

    def complete_dead_letter(self, message: QueueMessage) -> None:
        self._settle(message, "DELETE FROM messages", dead_lettered=True)

    def abandon_dead_letter(self, message: QueueMessage) -> None:
        """Unlock a received dead letter at once, so the next look (a sweep run now) sees it again."""
        self._settle(
            message,
            "UPDATE messages SET lock_token = NULL, locked_until = NULL, visible_at = ?",
            (time.time(),),
            dead_lettered=True,
        )

    def peek_live(self, max_count: int = 1000) -> list[QueueMessage]:
        """Messages not dead-lettered (active, scheduled or locked), oldest first; locks nothing."""
        return self._peek(max_count, dead_lettered=False)

    def _peek(self, max_count: int, *, dead_lettered: bool) -> list[QueueMessage]:
        with self._held(), self._unavailable_on_sqlite_errors():
            rows = fetch(
                self._connection(),
                f"SELECT {_COLUMNS} FROM messages WHERE queue = ? AND dead_lettered = ? ORDER BY seq LIMIT ?",
                (self.name, dead_lettered, max_count),
                _BUSY_TIMEOUT_SECONDS,
            )
        peeked = [_message(row) for row in rows]
        for message in peeked:
            message.lock_token = None  # a peek locks nothing, so it settles nothing
        return peeked

    def ping(self) -> None:
        """Raise DependencyUnavailable unless the queue can be written: a queue that only reads is down."""
        with self._held(), self._transaction() as conn:
            conn.execute("SELECT 1 FROM messages LIMIT 1").fetchall()

    # --- the consumer side (the Functions host's part in Azure) ---------------------------------

    def receive(self, max_count: int = 1, wait_seconds: float = 0.0) -> list[QueueMessage]:
        """Peek-lock up to max_count due messages, continuations first, blocking up to wait_seconds for one.

        Within each priority, oldest first: earliest enqueue time, then sequence number, so plain
        sends are FIFO by sequence while a scheduled message joins the line when it becomes due.
        """
        if max_count < 1:
            raise ValueError("max_count must be at least 1")
        deadline = time.monotonic() + wait_seconds
        with self._held():
            while True:
                messages = self._claim(time.time(), max_count, dead_lettered=False, lock_seconds=self.lock_seconds)
                if messages:
                    return messages
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                timeout = min(remaining, _CROSS_PROCESS_POLL_SECONDS)
                next_due = self._next_due()
                if next_due is not None:
                    timeout = min(timeout, max(0.0, next_due - time.time()))
                self._wakeup.wait(timeout)
                if self._conn is None:
                    return []  # closed while waiting: the runtime is shutting down

    def complete(self, message: QueueMessage, *, sends: Sequence[PendingSend] = ()) -> None:
        """Delete the message; with sends, enqueue them in the same transaction (see collecting_sends).

        Neither needs an fsync: until this commits, the message in hand stays in the queue, so losing
        the transaction to an OS crash only means that message is delivered again. If the lock was
        lost, nothing is deleted, the sends are committed durably on their own (whoever holds the
        message now may not send them), and MessageLockLost is raised.
        """
        if not sends:
            self._settle(message, "DELETE FROM messages", dead_lettered=False, fsync=False)
            return
        self._complete(message, sends, claim_next=False)

    def complete_and_receive(self, message: QueueMessage, *, sends: Sequence[PendingSend] = ()) -> QueueMessage | None:
        """complete(message, sends=...), and peek-lock the next due message in the same transaction.

        What a worker does between two messages, in one transaction instead of two: the message it
        receives is the one receive(1) would have given it then (continuations first, oldest first,
        delivery count raised), and, like any claim, losing it to a crash only lets its lock expire.
        """
        return self._complete(message, sends, claim_next=True)

    def _complete(
        self, message: QueueMessage, sends: Sequence[PendingSend], *, claim_next: bool
    ) -> QueueMessage | None:
        with self._held():
            completed = False
            scheduled = False
            following: list[QueueMessage] = []
            if message.lock_token is not None:
                with self._unavailable_on_sqlite_errors(), self._without_fsync(), self._transaction() as conn:
                    now = time.time()
                    completed = (
                        conn.execute(
                            "DELETE FROM messages WHERE seq = ? AND queue = ? AND lock_token = ? AND locked_until > ? "
                            "AND dead_lettered = 0 RETURNING seq",
                            (message.sequence_number, self.name, message.lock_token, now),
                        ).fetchone()
                        is not None
                    )
                    if completed:
                        scheduled = self._insert(conn, sends) if sends else False
                        if claim_next:
                            following = self._claim_in(conn, time.time(), 1, False, self.lock_seconds)
            if not completed and sends:
                with self._transaction() as conn:
                    scheduled = self._insert(conn, sends)
            # Wake a waiting worker for a send this worker did not take itself.
            if sends and (scheduled or [s.message_id for s in sends] != [m.message_id for m in following]):
                self._notify(scheduled)
        if not completed:
            raise MessageLockLost(
                f"lock on message {message.message_id!r} (sequence {message.sequence_number}) in queue "
                f"{self.name!r} expired or another consumer holds it; it is delivered again, not settled"
            )
        return following[0] if following else None

    def abandon(self, message: QueueMessage) -> None:
        """Unlock for immediate redelivery (no backoff); past max delivery count, dead-letter instead."""
        now = time.time()
        exhausted = f"delivery_count >= {self.max_delivery_count}"
        with self._held():
            dead_lettered = self._settle(
                message,
                "UPDATE messages SET lock_token = NULL, locked_until = NULL, visible_at = ?, "
                f"dead_lettered = ({exhausted}), "
                f"dead_letter_reason = CASE WHEN {exhausted} THEN '{MAX_DELIVERY_COUNT_EXCEEDED}' END, "
                f"dead_letter_description = CASE WHEN {exhausted} THEN {_EXHAUSTED_DESCRIPTION} END, "
                f"dead_lettered_at = CASE WHEN {exhausted} THEN ? END",
                (now, now),
                dead_lettered=False,
                returning="dead_lettered",
            )
            if dead_lettered:
                log.warning("message dead-lettered: %s", MAX_DELIVERY_COUNT_EXCEEDED, extra=self._dimensions(message))
            else:
                self._wakeup.notify()

    def dead_letter(self, message: QueueMessage, reason: str, description: str = "") -> None:
        now = time.time()
        self._settle(
            message,
            "UPDATE messages SET lock_token = NULL, locked_until = NULL, visible_at = ?, dead_lettered = 1, "
            "dead_letter_reason = ?, dead_letter_description = ?, dead_lettered_at = ?",
            (now, reason, description, now),
            dead_lettered=False,
        )

    def renew_lock(self, message: QueueMessage) -> datetime:
        """Extend the lock by lock_seconds from now; return the new expiry."""
        until = time.time() + self.lock_seconds
        renew = "UPDATE messages SET locked_until = ?, visible_at = ?"
        self._settle(message, renew, (until, until), dead_lettered=None, fsync=False)
        return datetime.fromtimestamp(until, UTC)

    def purge_dead_letters(self) -> int:
        with self._held(), self._transaction() as conn:
            return conn.execute("DELETE FROM messages WHERE queue = ? AND dead_lettered = 1", (self.name,)).rowcount

    def close(self) -> None:
        with self._wakeup:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._lazy_conn is not None:
                self._lazy_conn.close()
                self._lazy_conn = None
            self._wakeup.notify_all()  # a receive blocked on this object returns []

    def __enter__(self) -> LocalQueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- internals (callers hold self._wakeup) --------------------------------------------------

    @contextmanager
    def _held(self) -> Iterator[None]:
        """Hold this file's Condition, waiting a bounded time: behind a stalled holder, fail fast."""
        if not self._wakeup.acquire(timeout=_ACCESS_WAIT_SECONDS):
            raise DependencyUnavailable(
                f"embedded queue {self.path} ({self.name}): busy for over {_ACCESS_WAIT_SECONDS}s (stalled)"
            )
        try:
            yield
        finally:
            self._wakeup.release()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"LocalQueue {self.name!r} at {self.path} is closed")
        if self._lazy and self._lazy_conn is not None:
            return self._lazy_conn
        return self._conn

    @contextmanager
    def _unavailable_on_sqlite_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            # Locked past busy_timeout, disk full, unreadable file: the caller may retry later.
            raise DependencyUnavailable(f"embedded queue {self.path} ({self.name}): {exc}") from exc

    @contextmanager
    def _without_fsync(self) -> Iterator[None]:
        """Commit the statements inside without an fsync of their own (see the module docstring)."""
        self._lazy = True  # callers hold self._wakeup, so no other thread uses the connections meanwhile
        try:
            yield
        finally:
            self._lazy = False

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._unavailable_on_sqlite_errors():
            conn = self._connection()
            # IMMEDIATE takes the write lock up front, so two processes never claim the same row.
            begin_immediate(conn, _BUSY_TIMEOUT_SECONDS)
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _claim(self, now: float, max_count: int, *, dead_lettered: bool, lock_seconds: float) -> list[QueueMessage]:
        """Lock up to max_count visible messages of one sub-queue in one transaction."""
        with self._unavailable_on_sqlite_errors(), self._without_fsync(), self._transaction() as conn:
            return self._claim_in(conn, now, max_count, dead_lettered, lock_seconds)

    def _claim_in(
        self, conn: sqlite3.Connection, now: float, max_count: int, dead_lettered: bool, lock_seconds: float
    ) -> list[QueueMessage]:
        """The claim, inside the caller's transaction."""
        claimed: list[QueueMessage] = []
        locked_until = now + lock_seconds
        # Dead letters have no priority order; live messages are taken one priority at a time.
        priorities: tuple[int | None, ...] = (None,) if dead_lettered else _PRIORITIES
        while len(claimed) < max_count and priorities:
            priority = priorities[0]
            if priority is None:
                rows = conn.execute(
                    "SELECT seq, delivery_count FROM messages INDEXED BY messages_ready "
                    "WHERE queue = ? AND dead_lettered = ? AND enqueued_at <= ? AND visible_at <= ? "
                    "ORDER BY enqueued_at, seq LIMIT ?",
                    (self.name, dead_lettered, now, now, max_count - len(claimed)),
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT seq, delivery_count FROM messages INDEXED BY messages_ready_by_priority "
                    "WHERE queue = ? AND dead_lettered = ? AND priority = ? AND enqueued_at <= ? "
                    "AND visible_at <= ? ORDER BY enqueued_at, seq LIMIT ?",
                    (self.name, dead_lettered, priority, now, now, max_count - len(claimed)),
                ).fetchall()
            if not rows:
                priorities = priorities[1:]
                continue
            for seq, delivery_count in rows:
                if not dead_lettered and delivery_count >= self.max_delivery_count:
                    # A lock expired on the last allowed delivery: dead-letter, never deliver once more.
                    where = {"queue": self.name, "sequence_number": seq}
                    log.warning("message dead-lettered: %s", MAX_DELIVERY_COUNT_EXCEEDED, extra=where)
                    conn.execute(
                        "UPDATE messages SET lock_token = NULL, locked_until = NULL, visible_at = ?, "
                        f"dead_lettered = 1, dead_letter_reason = '{MAX_DELIVERY_COUNT_EXCEEDED}', "
                        f"dead_letter_description = {_EXHAUSTED_DESCRIPTION}, dead_lettered_at = ? WHERE seq = ?",
                        (now, now, seq),
                    )
                    continue
                row = conn.execute(
                    "UPDATE messages SET delivery_count = delivery_count + ?, lock_token = ?, "
                    f"locked_until = ?, visible_at = ? WHERE seq = ? RETURNING {_COLUMNS}",
                    (0 if dead_lettered else 1, uuid.uuid4().hex, locked_until, locked_until, seq),
                ).fetchone()
                claimed.append(_message(row))
        return claimed

    def _settle(
        self,
        message: QueueMessage,
        statement: str,
        params: tuple[Any, ...] = (),
        *,
        dead_lettered: bool | None,
        returning: str = "seq",
        fsync: bool = True,
    ) -> object:
        """Run statement on the message if its lock is still ours, else raise MessageLockLost."""
        row = None
        if message.lock_token is not None:
            sql = statement + " WHERE seq = ? AND queue = ? AND lock_token = ? AND locked_until > ?"
            where: tuple[Any, ...] = (message.sequence_number, self.name, message.lock_token, time.time())
            if dead_lettered is not None:
                sql += " AND dead_lettered = ?"
                where += (dead_lettered,)
            with self._held(), self._unavailable_on_sqlite_errors():
                with self._without_fsync() if not fsync else nullcontext():
                    conn = self._connection()
                    statement_ = f"{sql} RETURNING {returning}"
                    row = retry(lambda: conn.execute(statement_, params + where).fetchone(), _BUSY_TIMEOUT_SECONDS)
        if row is None:
            raise MessageLockLost(
                f"lock on message {message.message_id!r} (sequence {message.sequence_number}) in queue "
                f"{self.name!r} expired or another consumer holds it; it is delivered again, not settled"
            )
        return row[0]

    def _dimensions(self, message: QueueMessage) -> dict[str, object]:
        return {"queue": self.name, "message_id": message.message_id, "sequence_number": message.sequence_number}

    def _next_due(self) -> float | None:
        """When the next scheduled message or expiring lock becomes receivable."""
        with self._unavailable_on_sqlite_errors():
            conn = self._connection()
            ((due,),) = fetch(
                conn,
                "SELECT MIN(visible_at) FROM messages WHERE queue = ? AND dead_lettered = 0 AND visible_at > ?",
                (self.name, time.time()),
                _BUSY_TIMEOUT_SECONDS,
            )
        return float(due) if due is not None else None

    def _insert(self, conn: sqlite3.Connection, sends: Sequence[PendingSend]) -> bool:
        """Insert the sends not seen within the duplicate window; True if one is scheduled for later."""
        # Read the clock under the write lock, so enqueue times rise with sequence numbers.
        now = time.time()
        scheduled = False
        for s in sends:
            due = max(now, _epoch(s.scheduled_at)) if s.scheduled_at is not None else now
            # One statement records the id and says whether it is new: an id sent within the window
            # is left alone (no row changes) and its message dropped.
            fresh = conn.execute(
                "INSERT INTO message_ids (queue, message_id, sent_at) VALUES (?, ?, ?) "
                "ON CONFLICT (queue, message_id) DO UPDATE SET sent_at = excluded.sent_at "
                "WHERE message_ids.sent_at <= ?",
                (self.name, s.message_id, now, now - self.duplicate_window_seconds),
            ).rowcount
            if not fresh:
                log.debug("duplicate message dropped", extra={"message_id": s.message_id, "queue": self.name})
                continue
            conn.execute(
                "INSERT INTO messages (queue, message_id, body, enqueued_at, scheduled_at, visible_at, priority) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    self.name,
                    s.message_id,
                    s.body,
                    due,
                    None if s.scheduled_at is None else _epoch(s.scheduled_at),
                    due,
                    1 if s.continuation else 0,
                ),
            )
            scheduled = scheduled or due > now
        self._prune_message_ids(conn, now)
        return scheduled

    def _notify(self, scheduled: bool, sent: int = 1) -> None:
        if scheduled:
            # Every waiter must shorten its wait to the new due time, not just one of them.
            self._wakeup.notify_all()
        else:
            self._wakeup.notify(sent)

    def _prune_message_ids(self, conn: sqlite3.Connection, now: float) -> None:
        """Forget message ids older than the duplicate window, now and then, so the table stays small."""
        if now - self._last_prune < _PRUNE_IDS_EVERY_SECONDS:
            return
        self._last_prune = now
        conn.execute(
            "DELETE FROM message_ids WHERE queue = ? AND sent_at <= ?", (self.name, now - self.duplicate_window_seconds)
        )
