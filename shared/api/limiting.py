"""Request limits whose counts every process of one deployment shares: per key, per tenant, and
failed authentication per client address.

The counting is the `limits` library's fixed window; its counters live in a storage. The embedded
runtime's is `SqliteCounters`, a table in DATA_DIR (as the queue is), so the API process, a second
runtime on the same data directory and the CLI all count against the same numbers. Each hit is one
atomic UPSERT: a window that has expired starts again at the hit's cost, otherwise the cost is added,
in the same statement, so two processes can never both see the last free slot. RATE_LIMIT_STORAGE
names another `limits` storage (e.g. a Redis URI) for deployments that scale out; on Azure the
front door is API Management's `rate-limit-by-key` (docs/security.md).
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

from shared.errors import TooManyRequests
from shared.settings import Settings

__all__ = ["Limits", "NeedsStorage", "SqliteCounters"]

SWEEP_EVERY = 256
BLOCK_SHARE = 16  # a reserved block is at most this fraction of what the window still has
MAX_BLOCK = 32
ADDRESS_RECHECK_SECONDS = 1.0
SWEEP_AT = 10_000  # blocks or addresses kept in memory before the ended ones are dropped
_failures = itertools.count(1)
log = logging.getLogger("agent.api")
_LOG_EVERY_SECONDS = 10.0
_last_outage_log = [float("-inf")]


class SqliteCounters(Storage):
    """`limits` counters in one SQLite table, shared by every process that opens the same file."""

    STORAGE_SCHEME = ["agent-sqlite"]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, *, path: Path | None = None) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions)
        if path is None:
            raise ValueError("SqliteCounters needs path=")
        self.path = path
        self._local = threading.local()  # one connection per thread: sqlite3 connections are not shared
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db().execute(
            "CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires REAL NOT NULL)"
        )

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode = WAL")
            # Counters need no fsync: after an OS crash a window that restarts early is harmless.
            db.execute("PRAGMA synchronous = OFF")
            self._local.db = db
        return db

    @property
    def base_exceptions(self) -> type[Exception]:
        return sqlite3.Error

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self.incr_with_expiry(key, expiry, amount)[0]

    def incr_with_expiry(self, key: str, expiry: int, amount: int) -> tuple[int, float]:
        """incr, answering the window's end too: a block reservation is then one statement."""
        now = time.time()
        row = (
            self._db()
            .execute(
                "INSERT INTO counters (key, value, expires) VALUES (?1, ?2, ?3) ON CONFLICT (key) DO UPDATE SET "
                "value = CASE WHEN expires <= ?4 THEN ?2 ELSE value + ?2 END, "
                "expires = CASE WHEN expires <= ?4 THEN ?3 ELSE expires END RETURNING value, expires",
                (key, amount, now + expiry, now),
            )
            .fetchone()
        )
        return int(row[0]), float(row[1])

    def get(self, key: str) -> int:
        sql = "SELECT value FROM counters WHERE key = ? AND expires > ?"
        row = self._db().execute(sql, (key, time.time())).fetchone()
        return int(row[0]) if row else 0

    def get_expiry(self, key: str) -> float:
        row = self._db().execute("SELECT expires FROM counters WHERE key = ?", (key,)).fetchone()
        return float(row[0]) if row else time.time()

    def check(self) -> bool:
        self._db().execute("SELECT 1").fetchone()
        return True

    def reset(self) -> int | None:
        return self._db().execute("DELETE FROM counters").rowcount

    def clear(self, key: str) -> None:
        self._db().execute("DELETE FROM counters WHERE key = ?", (key,))

    def sweep(self) -> int:
        """Delete expired windows (the table otherwise keeps one row per key, address and tenant ever seen)."""
        return self._db().execute("DELETE FROM counters WHERE expires <= ?", (time.time(),)).rowcount


def counters_path(settings: Settings) -> Path:
    """DATA_DIR/limits.db on the embedded runtime; on Azure storage, the instance's temp directory.

    A Function App's package directory is read-only and its instances share no disk, so there the
    file counts per instance (the deployment-wide limit is API Management's, docs/security.md).
    """
    if settings.storage_connection or settings.storage_blob_uri:
        return Path(tempfile.gettempdir()) / "agent-framework-limits.db"
    return settings.data_dir / "limits.db"


class NeedsStorage(Exception):
    """A quick check (on the event loop) cannot decide without a storage round trip: run the full one in a thread."""


@dataclass
class _Block:
    """Hits of one limit that this process reserved in the shared window and may admit without asking again."""

    left: int
    expires: float  # the shared window's end (time.time()); the block is void after it
    full: bool  # the shared count reached the limit: refuse until `expires`
    next_size: int  # how many to reserve next time


class Limits:
    """The three limits of the API, over one shared storage, counted in blocks.

    Each process reserves hits of a key's (or tenant's) window from the shared counter in blocks: one
    UPSERT adds the block's size and answers the new total, and the process admits from its block in
    memory until the block is used up. A block is at most 1/BLOCK_SHARE of what the window still had
    when it was reserved (and at most MAX_BLOCK), so blocks shrink to a single hit as the window fills.
    Every admitted request is backed by a hit of the shared counter: never more than the limit is
    admitted across processes. The precision is on the other side: hits a process reserved and has
    not used count against everyone until the window ends, so when a process stops receiving requests
    with part of its block left, other processes are refused up to that many requests early. A full
    window is remembered until it ends, so refusals need no round trip either.

    Failed authentications per address: an address found under its limit is not asked about again
    for ADDRESS_RECHECK_SECONDS (a failure in this process asks at once), so failures counted by
    another process block the address here within that time.
    """

    def __init__(
        self,
        limiter: FixedWindowRateLimiter,
        per_key: RateLimitItem,
        per_tenant: RateLimitItem,
        failures_per_address: RateLimitItem,
    ) -> None:
        self.limiter = limiter
        self.per_key = per_key
        self.per_tenant = per_tenant
        self.failures_per_address = failures_per_address
        self._blocks: dict[str, _Block] = {}  # by the limit's counter key
        self._clean: dict[str, float] = {}  # address -> time.monotonic() until which it is known under its limit
        self._lock = threading.Lock()  # held for memory only, never across a storage call

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        uri = settings.rate_limit_storage
        storage = SqliteCounters(path=counters_path(settings)) if uri == "sqlite" else storage_from_string(uri)
        return cls(
            FixedWindowRateLimiter(storage),
            RateLimitItemPerMinute(settings.rate_limit_per_minute),
            RateLimitItemPerMinute(settings.tenant_rate_limit_per_minute),
            RateLimitItemPerMinute(settings.auth_failures_per_minute),
        )

    def admit(self, tenant: str, key_id: str, *, quick: bool = False) -> None:
        """Count one request of this key and tenant; TooManyRequests (with Retry-After) past either limit.

        quick=True decides from this process's blocks alone, or raises NeedsStorage having counted nothing.
        """
        limits = (
            (self.per_key, ("key", key_id), "this key"),
            (self.per_tenant, ("tenant", tenant), f"tenant {tenant}"),
        )
        if quick:
            with self._lock:
                blocks = [self._live(item, ids) for item, ids, _ in limits]
                if all(b is not None and b.left > 0 for b in blocks):
                    for b in blocks:
                        b.left -= 1  # type: ignore[union-attr]
                    return
                for b, (item, _, what) in zip(blocks, limits, strict=True):
                    if b is not None and b.left == 0 and b.full:
                        self._refuse(item, b.expires, what)
                    if b is None or b.left == 0:
                        raise NeedsStorage
        for item, ids, what in limits:
            self._take(item, ids, what)

    def check_address(self, address: str, *, quick: bool = False) -> None:
        """Refuse every attempt from an address that failed authentication too often in this window."""
        with self._lock:
            if self._clean.get(address, float("-inf")) > time.monotonic():
                return
        if quick:
            raise NeedsStorage
        item, ids = self.failures_per_address, ("auth-failures", address)
        if self._counted(lambda: self.limiter.test(item, *ids)):
            with self._lock:
                self._sweep()
                self._clean[address] = time.monotonic() + ADDRESS_RECHECK_SECONDS
            return
        reset = self.limiter.get_window_stats(item, *ids).reset_time
        self._refuse(item, reset, "failed authentications from here")

    def failed(self, address: str) -> None:
        """Count one failed authentication from this address."""
        with self._lock:
            self._clean.pop(address, None)
        self._counted(lambda: self.limiter.hit(self.failures_per_address, "auth-failures", address))
        storage = self.limiter.storage
        if isinstance(storage, SqliteCounters) and next(_failures) % SWEEP_EVERY == 0:
            self._counted(lambda: bool(storage.sweep()))  # many guessing addresses leave rows: drop expired ones

    def _live(self, item: RateLimitItem, ids: tuple[str, ...]) -> _Block | None:
        found = self._blocks.get(item.key_for(*ids))
        return found if found is not None and found.expires > time.time() else None

    def _take(self, item: RateLimitItem, ids: tuple[str, ...], what: str) -> None:
        """One hit: from this process's block, else from a block reserved now."""
        key = item.key_for(*ids)
        with self._lock:
            block = self._live(item, ids)
            if block is not None and block.left > 0:
                block.left -= 1
                return
            if block is not None and block.full:
                self._refuse(item, block.expires, what)
            size = block.next_size if block is not None else 1  # a new window: one hit, then by what is left
        try:
            value, expires = self._reserve(key, item, size)
        except Exception as exc:  # noqa: BLE001 - any storage fault: sqlite3, OSError, a remote store's own
            self._unavailable(exc)
            return
        granted = max(0, min(size, item.amount - (value - size)))
        with self._lock:
            self._sweep()
            block = self._blocks.get(key)
            if block is None or block.expires != expires:  # the first block of a new window
                block = self._blocks[key] = _Block(0, expires, False, 1)
            block.left += max(0, granted - 1)  # the first granted hit is this request's
            block.full = value >= item.amount
            block.next_size = max(1, min(MAX_BLOCK, (item.amount - value) // BLOCK_SHARE))
        if granted == 0:
            self._refuse(item, expires, what)

    def _reserve(self, key: str, item: RateLimitItem, size: int) -> tuple[int, float]:
        """Add `size` hits to the shared window: (its new count, when it ends)."""
        storage = self.limiter.storage
        if isinstance(storage, SqliteCounters):
            return storage.incr_with_expiry(key, item.get_expiry(), size)
        return int(storage.incr(key, item.get_expiry(), amount=size)), float(storage.get_expiry(key))

    def _sweep(self) -> None:
        """Drop what has ended once the maps grow (called with the lock held)."""
        if len(self._blocks) > SWEEP_AT:
            now = time.time()
            self._blocks = {k: b for k, b in self._blocks.items() if b.expires > now}
        if len(self._clean) > SWEEP_AT:
            now = time.monotonic()
            self._clean = {a: t for a, t in self._clean.items() if t > now}

    def _counted(self, count: Callable[[], bool]) -> bool:
        """count()'s answer, or True (admit) when the counters are unavailable: logged, at most every 10 s."""
        try:
            return count()
        except Exception as exc:  # noqa: BLE001 - any storage fault: sqlite3, OSError, a remote store's own
            self._unavailable(exc)
            return True

    @staticmethod
    def _unavailable(exc: Exception) -> None:
        now = time.monotonic()
        if now - _last_outage_log[0] >= _LOG_EVERY_SECONDS:
            _last_outage_log[0] = now
            log.warning(
                "rate limit counters unavailable, admitting requests uncounted: %s",
                exc,
                extra={"event": "limits_unavailable"},
            )

    @staticmethod
    def _refuse(item: RateLimitItem, reset: float, what: str) -> None:
        raise TooManyRequests(
            f"limit of {item.amount} per minute for {what} exceeded",
            headers={"Retry-After": str(max(1, round(reset - time.time())))},
        )
