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

__all__ = ["Limits", "SqliteCounters"]

SWEEP_EVERY = 256
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
        now = time.time()
        row = (
            self._db()
            .execute(
                "INSERT INTO counters (key, value, expires) VALUES (?1, ?2, ?3) ON CONFLICT (key) DO UPDATE SET "
                "value = CASE WHEN expires <= ?4 THEN ?2 ELSE value + ?2 END, "
                "expires = CASE WHEN expires <= ?4 THEN ?3 ELSE expires END RETURNING value",
                (key, amount, now + expiry, now),
            )
            .fetchone()
        )
        return int(row[0])

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


@dataclass(frozen=True)
class Limits:
    """The three limits of the API, over one shared storage."""

    limiter: FixedWindowRateLimiter
    per_key: RateLimitItem
    per_tenant: RateLimitItem
    failures_per_address: RateLimitItem

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

    def admit(self, tenant: str, key_id: str) -> None:
        """Count one request of this key and tenant; TooManyRequests (with Retry-After) past either limit."""
        if not self._counted(lambda: self.limiter.hit(self.per_key, "key", key_id)):
            self._refuse(self.per_key, ("key", key_id), "this key")
        if not self._counted(lambda: self.limiter.hit(self.per_tenant, "tenant", tenant)):
            self._refuse(self.per_tenant, ("tenant", tenant), f"tenant {tenant}")

    def check_address(self, address: str) -> None:
        """Refuse every attempt from an address that failed authentication too often in this window."""
        if not self._counted(lambda: self.limiter.test(self.failures_per_address, "auth-failures", address)):
            self._refuse(self.failures_per_address, ("auth-failures", address), "failed authentications from here")

    def failed(self, address: str) -> None:
        """Count one failed authentication from this address."""
        self._counted(lambda: self.limiter.hit(self.failures_per_address, "auth-failures", address))
        storage = self.limiter.storage
        if isinstance(storage, SqliteCounters) and next(_failures) % SWEEP_EVERY == 0:
            self._counted(lambda: bool(storage.sweep()))  # many guessing addresses leave rows: drop expired ones

    def _counted(self, count: Callable[[], bool]) -> bool:
        """count()'s answer, or True (admit) when the counters are unavailable: logged, at most every 10 s."""
        try:
            return count()
        except Exception as exc:  # noqa: BLE001 - any storage fault: sqlite3, OSError, a remote store's own
            now = time.monotonic()
            if now - _last_outage_log[0] >= _LOG_EVERY_SECONDS:
                _last_outage_log[0] = now
                log.warning(
                    "rate limit counters unavailable, admitting requests uncounted: %s",
                    exc,
                    extra={"event": "limits_unavailable"},
                )
            return True

    def _refuse(self, item: RateLimitItem, ids: tuple[str, ...], what: str) -> None:
        reset = self.limiter.get_window_stats(item, *ids).reset_time
        raise TooManyRequests(
            f"limit of {item.amount} per minute for {what} exceeded",
            headers={"Retry-After": str(max(1, round(reset - time.time())))},
        )
