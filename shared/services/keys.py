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
from datetime import UTC, datetime, timedelta
from typing import Literal

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


def _save(b: Backends, record: StoredKey, *, if_match: str | None = None) -> None:
    b.objects.put(f"{CONTAINER}{record.id}.json", record.model_dump_json().encode(), if_match=if_match)


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


def verify(b: Backends, presented: str, now: datetime | None = None) -> StoredKey | None:
    """The active record this key belongs to, or None (unknown, wrong secret, revoked or expired)."""
    key_id = key_id_of(presented)
    if key_id is None:
        return None
    found = b.objects.get(f"{CONTAINER}{key_id}.json")
    if found is None:
        return None
    record = StoredKey.model_validate_json(found.data)
    now = now or datetime.now(UTC)
    if not hmac.compare_digest(record.sha256, _digest(presented)) or not record.active(now):
        return None
    if record.last_used_at is None or now - record.last_used_at >= LAST_USED_EVERY:
        try:  # best effort: a concurrent request that wrote it first is just as good
            _save(b, record.model_copy(update={"last_used_at": now}), if_match=found.etag)
        except Exception:  # noqa: BLE001 - bookkeeping must never fail a request
            log.debug("last_used_at of key %s not updated", key_id)
    return record


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
    return record
