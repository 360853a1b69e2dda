"""API keys at rest: issued, listed and revoked keys, stored as hashes in the object store.

A key reads `afk_<key id>_<secret>`: the id finds the record (`keys/{key_id}.json`, one object read),
and the sha256 of the whole key is compared in constant time with the stored hash. The secret is 32
random bytes, so a fast hash is enough: bcrypt's or argon2's work factor protects low-entropy
passwords from guessing, and nobody can enumerate 2^256 secrets whatever the hash costs; a slow hash
would only add milliseconds to every request. The plaintext is returned once, by `issue`, and never
stored. A tenant may hold several active keys, so a key is rotated by issuing the new one, moving
the callers, then revoking the old one.

Keys configured in API_KEYS (settings) stay valid beside these: they are how the embedded demo and
the tests authenticate, and how a deployment bootstraps its first admin.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
import weakref
from datetime import UTC, datetime, timedelta
from typing import Literal, NamedTuple

from pydantic import BaseModel, Field

from shared.engine.backends import Backends
from shared.errors import InvalidRequest, NotFound

log = logging.getLogger("agent.keys")

PREFIX = "afk"
CONTAINER = "keys/"
Role = Literal["submitter", "operator", "admin"]
_KEY = re.compile(rf"^{PREFIX}_([0-9a-f]{{16}})_([A-Za-z0-9_-]{{43}})$")
_DURATION = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
LAST_USED_EVERY = timedelta(minutes=5)  # how fresh last_used_at is: one write per key per interval, not per request


class KeyNotFound(NotFound):
    fix = "check the id with `agentctl keys list`"


class StoredKey(BaseModel):
    """What the store keeps of a key: never the key itself."""

    id: str
    tenant: str = Field(max_length=100)
    role: Role
    sha256: str = Field(description="sha256 of the whole key, hex.")
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    note: str = Field("", max_length=200)

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


class IssuedKey(BaseModel):
    key: str = Field(description="The key itself: shown this once, stored only as its hash.")
    record: StoredKey


def parse_duration(text: str) -> timedelta:
    """'30d', '12h', '90m', '2w' -> a timedelta."""
    found = _DURATION.match(text.strip())
    if not found or int(found.group(1)) == 0:
        raise InvalidRequest(f"expiry {text!r} is not a duration like 30d, 12h, 90m or 2w")
    return timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _save(b: Backends, record: StoredKey, *, if_match: str | None = None) -> str:
    return b.objects.put(f"{CONTAINER}{record.id}.json", record.model_dump_json().encode(), if_match=if_match)


def issue(b: Backends, tenant: str, role: Role, *, expires_in: timedelta | None = None, note: str = "") -> IssuedKey:
    """A new key for this tenant and role; the returned plaintext is the only copy."""
    if not tenant.strip():
        raise InvalidRequest("a key needs a tenant")
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    key = f"{PREFIX}_{key_id}_{secret}"
    now = datetime.now(UTC)
    record = StoredKey(
        id=key_id,
        tenant=tenant.strip(),
        role=role,
        sha256=_digest(key),
        created_at=now,
        expires_at=now + expires_in if expires_in else None,
        note=note,
    )
    b.objects.put_if_absent(f"{CONTAINER}{key_id}.json", record.model_dump_json().encode())
    log.info("key issued: %s for tenant %s, role %s", key_id, record.tenant, role, extra={"tenant": record.tenant})
    return IssuedKey(key=key, record=record)


def key_id_of(presented: str) -> str | None:
    """The id inside a key of this store's format, or None for any other string."""
    found = _KEY.match(presented)
    return found.group(1) if found else None


class _Cached(NamedTuple):
    record: StoredKey
    etag: str
    read_at: float  # time.monotonic()


# Stored key records read in the last KEY_CACHE_SECONDS, per object store, by key id. Only records are
# cached, never a verdict: the presented key's digest, revocation and expiry are checked on every use.
_cache: weakref.WeakKeyDictionary[object, dict[str, _Cached]] = weakref.WeakKeyDictionary()
# When this process last revoked each key: a record read before that (a request that raced the revoke)
# is never served from the cache.
_forgotten: weakref.WeakKeyDictionary[object, dict[str, float]] = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()
CACHE_MAX = 10_000


def _cached(b: Backends, key_id: str) -> _Cached | None:
    with _cache_lock:
        found = _cache.get(b.objects, {}).get(key_id)
        forgotten = _forgotten.get(b.objects, {}).get(key_id, float("-inf"))
    if found is None or found.read_at <= forgotten or time.monotonic() - found.read_at >= b.settings.key_cache_seconds:
        return None
    return found


def _remember(b: Backends, found: _Cached) -> None:
    if b.settings.key_cache_seconds <= 0:
        return
    with _cache_lock:
        known = _cache.setdefault(b.objects, {})
        if len(known) >= CACHE_MAX:
            known.clear()  # rare (that many keys in use within seconds): start again rather than grow
        known[found.record.id] = found


def _forget(b: Backends, key_id: str) -> None:
    with _cache_lock:
        _cache.get(b.objects, {}).pop(key_id, None)
        _forgotten.setdefault(b.objects, {})[key_id] = time.monotonic()


def _accepted(record: StoredKey, presented: str, now: datetime) -> bool:
    return hmac.compare_digest(record.sha256, _digest(presented)) and record.active(now)


def verify(b: Backends, presented: str, now: datetime | None = None) -> StoredKey | None:
    """The active record this key belongs to, or None (unknown, wrong secret, revoked or expired).

    The record may come from this process's cache (KEY_CACHE_SECONDS): a key revoked by another
    process is refused here at most that long after.
    """
    key_id = key_id_of(presented)
    if key_id is None:
        return None
    now = now or datetime.now(UTC)
    cached = _cached(b, key_id)
    if cached is None:
        read_at = time.monotonic()  # before the read: a revoke in this process after it voids the entry
        found = b.objects.get(f"{CONTAINER}{key_id}.json")
        if found is None:
            return None
        cached = _Cached(StoredKey.model_validate_json(found.data), found.etag, read_at)
        _remember(b, cached)
    record = cached.record
    if not _accepted(record, presented, now):
        return None
    if record.last_used_at is None or now - record.last_used_at >= LAST_USED_EVERY:
        used = record.model_copy(update={"last_used_at": now})
        try:  # best effort: a concurrent request that wrote it first is just as good
            read_at = time.monotonic()
            _remember(b, _Cached(used, _save(b, used, if_match=cached.etag), read_at))
        except Exception:  # noqa: BLE001 - bookkeeping must never fail a request
            _forget(b, key_id)  # changed under us (revoked?): read it again next time
            log.debug("last_used_at of key %s not updated", key_id)
    return record


def verify_cached(b: Backends, presented: str, now: datetime | None = None) -> StoredKey | None | Literal[False]:
    """verify() from the cache alone: the record, None (refused), or False when it needs the store."""
    key_id = key_id_of(presented)
    if key_id is None:
        return None
    cached = _cached(b, key_id)
    if cached is None:
        return False
    now = now or datetime.now(UTC)
    if not _accepted(cached.record, presented, now):
        return None
    last_used = cached.record.last_used_at
    return False if last_used is None or now - last_used >= LAST_USED_EVERY else cached.record


def list_keys(b: Backends, tenant: str | None = None) -> list[StoredKey]:
    """Every stored key (or one tenant's), newest first; revoked and expired ones too."""
    records = []
    for name in b.objects.list(CONTAINER):
        found = b.objects.get(name)
        if found is not None:
            record = StoredKey.model_validate(json.loads(found.data))
            if tenant is None or record.tenant == tenant:
                records.append(record)
    return sorted(records, key=lambda r: r.created_at, reverse=True)


def revoke(b: Backends, key_id: str) -> StoredKey:
    """Revoke a key from now on; the record stays, as the trail of who held access."""
    found = b.objects.get(f"{CONTAINER}{key_id}.json") if re.fullmatch(r"[0-9a-f]{16}", key_id) else None
    if found is None:
        raise KeyNotFound(f"no key {key_id}")
    record = StoredKey.model_validate_json(found.data)
    if record.revoked_at is None:
        record = record.model_copy(update={"revoked_at": datetime.now(UTC)})
        _save(b, record)
        log.info("key revoked: %s of tenant %s", key_id, record.tenant, extra={"tenant": record.tenant})
    _forget(b, key_id)  # refused by this process from now on, whatever its cache held or a racing read brings
    return record
