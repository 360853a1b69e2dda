"""Leases over the ObjectStore port: one holder at a time for a maintenance task, on any backend.

A lease is the object locks/{name}.json, {owner, holder, acquired_at, expires_at}:
- acquire: create-only write (If-None-Match: *). If the object exists and its expiry has passed,
  take it over with an If-Match write on the ETag we read, so of two instances racing for a
  dead holder's lease exactly one wins;
- renew: If-Match write of a later expiry; a failed If-Match means someone took the lease over
  after it expired, so the holder must stop (LeaseLost) rather than keep writing;
- release: If-Match delete, so a holder whose lease was taken over never deletes the new one.

The same three operations exist on Blob Storage and on the embedded store, so this works
unchanged in Azure (several Function instances) and locally (several runtime processes).
Expiry compares the holder's clock with the reader's; leases last minutes and are renewed
every third of their life, so ordinary clock skew (seconds) does not matter.

A holder killed mid-run (SIGKILL, OOM, a host restart of the worker) cannot release its lease,
and waiting out the TTL would keep the task away for minutes: after a crash, dead-lettered
steps waited five minutes for the sweep. The holder record names host and process, so a
holder whose process has exited is treated as expired at once. Pids are only compared within
one pid namespace of one running kernel (boot id plus namespace inode, not the host name, which
two containers may share); any other holder is judged by its expiry alone, and a pid that was
reused counts as alive: both err on the side of waiting, never of two holders.

Leases are re-entrant per execution context: a timer that holds "backup" may call
run_backup(), which takes "backup" again, without deadlocking on itself.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

from shared.engine.layout import lease_key
from shared.errors import DependencyUnavailable, OperationRunning
from shared.ports import ObjectStore, PreconditionFailed

log = logging.getLogger("agent.maintenance")

DEFAULT_TTL_SECONDS = 300.0
_ATTEMPTS = 3

# Leases this process finished with but could not delete (storage was down at release): lease key
# -> the ETag of our record. The work under them has ended, so the next acquire here deletes them
# (If-Match: never a record someone else wrote since) instead of waiting out their TTL. Without
# this, one sweep that ended during a full disk kept every later sweep away for five minutes.
_left_behind: dict[str, str] = {}
_left_behind_lock = threading.Lock()


class LeaseHeld(OperationRunning):
    """Another instance holds the lease; the work is being done there."""

    def __init__(self, name: str, holder: str, expires_at: datetime | None) -> None:
        until = f" until {expires_at.isoformat(timespec='seconds')}" if expires_at else ""
        super().__init__(f"{name} is already running on {holder} (lease held{until}); try again when it has finished")
        self.name, self.holder, self.expires_at = name, holder, expires_at


class LeaseLost(OperationRunning):
    """Our lease expired and another instance took it over; stop before doing the work twice."""


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


class Lease:
    """A held lease. Call keep_alive() in long loops; release() (or leave the `exclusive` block) when done."""

    def __init__(self, objects: ObjectStore, name: str, owner: str, ttl: float, etag: str, expires: float) -> None:
        self.objects, self.name, self.owner, self.ttl = objects, name, owner, ttl
        self.etag = etag
        self.expires = expires
        self._renewed = time.time()

    def _record(self, now: float) -> bytes:
        return json.dumps(
            {
                "name": self.name,
                "owner": self.owner,
                "holder": _holder(),
                "pid": os.getpid(),
                "pid_space": _PID_SPACE,
                "acquired_at": _stamp(now),
                "expires_at": _stamp(now + self.ttl),
            }
        ).encode()

    def renew(self) -> None:
        now = time.time()
        try:
            self.etag = self.objects.put(lease_key(self.name), self._record(now), if_match=self.etag)
        except PreconditionFailed:
            raise LeaseLost(f"lease {self.name} was taken over by another instance after it expired") from None
        self.expires, self._renewed = now + self.ttl, now

    def keep_alive(self) -> None:
        """Renew once a third of the lease's life has passed; cheap to call on every page of work."""
        if time.time() - self._renewed >= self.ttl / 3:
            self.renew()

    def release(self) -> None:
        try:
            self.objects.delete(lease_key(self.name), if_match=self.etag)
        except DependencyUnavailable:
            with _left_behind_lock:
                _left_behind[lease_key(self.name)] = self.etag
            log.warning(
                "lease %s could not be released (storage unavailable); this process deletes it when it next takes it",
                self.name,
                extra={"event": "lease_left_behind"},
            )
            raise
        except PreconditionFailed:
            log.warning(
                "lease %s was taken over before release; left to its new holder",
                self.name,
                extra={"event": "lease_lost"},
            )


def acquire(objects: ObjectStore, name: str, *, ttl: float = DEFAULT_TTL_SECONDS) -> Lease:
    """Take the lease or raise LeaseHeld."""
    owner = uuid.uuid4().hex
    lease = Lease(objects, name, owner, ttl, etag="", expires=0.0)
    key = lease_key(name)
    _clear_left_behind(objects, key)
    for _ in range(_ATTEMPTS):
        now = time.time()
        try:
            lease.etag = objects.put_if_absent(key, lease._record(now))
            lease.expires = now + ttl
            return lease
        except PreconditionFailed:
            pass
        found = objects.get(key)
        if found is None:
            continue  # released between our two calls: try the create again
        holder, expires_at, gone = _read(found.data)
        if expires_at is not None and expires_at.timestamp() > now and not gone:
            raise LeaseHeld(name, holder, expires_at)
        try:
            lease.etag = objects.put(key, lease._record(now), if_match=found.etag)
        except PreconditionFailed:
            continue  # another instance took it over first; the next round reports it as held
        lease.expires = now + ttl
        log.warning(
            "lease %s taken over from %s, %s",
            name,
            holder,
            "whose process has exited"
            if gone
            else f"whose lease expired at {expires_at.isoformat() if expires_at else '?'}",
            extra={"event": "lease_taken_over"},
        )
        return lease
    found = objects.get(key)
    holder, expires_at, _ = _read(found.data) if found else ("another instance", None, False)
    raise LeaseHeld(name, holder, expires_at)


def _pid_space() -> str | None:
    """This process's pid namespace on this boot of this kernel; None where that cannot be told."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as boot:
            return f"{boot.read().strip()}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


_PID_SPACE = _pid_space()


def _process_gone(record: dict[str, object]) -> bool:
    """Whether a lease record's holder is a process of our pid namespace that no longer runs."""
    try:
        pid, space = int(record["pid"]), record["pid_space"]  # type: ignore[call-overload]
    except (ValueError, KeyError, TypeError):
        return False
    if _PID_SPACE is None or space != _PID_SPACE or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, owned by another user
    # Killed but not yet reaped by its parent: a zombie runs no code and holds nothing.
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def _clear_left_behind(objects: ObjectStore, key: str) -> None:
    with _left_behind_lock:
        etag = _left_behind.get(key)
    if etag is None:
        return
    try:
        objects.delete(key, if_match=etag)
    except PreconditionFailed:
        pass  # expired and taken over (or deleted) since: not ours any more
    with _left_behind_lock:
        if _left_behind.get(key) == etag:
            del _left_behind[key]


def _read(data: bytes) -> tuple[str, datetime | None, bool]:
    """(holder, expiry, whether the holder's process is gone) of a lease record.

    An unreadable record counts as expired, so it cannot block forever.
    """
    try:
        record = json.loads(data)
        return str(record.get("holder", "?")), datetime.fromisoformat(record["expires_at"]), _process_gone(record)
    except (ValueError, KeyError, TypeError, AttributeError):
        return "an unreadable lease record", None, False


_held: ContextVar[dict[tuple[int, str], Lease] | None] = ContextVar("maintenance_leases", default=None)


@contextmanager
def exclusive(objects: ObjectStore, name: str, *, ttl: float = DEFAULT_TTL_SECONDS) -> Iterator[Lease]:
    """Hold lease `name` for the block (re-entrant in one execution context); LeaseHeld if another holds it."""
    held = _held.get() or {}
    slot = (id(objects), name)
    if slot in held:
        yield held[slot]
        return
    lease = acquire(objects, name, ttl=ttl)
    token = _held.set({**held, slot: lease})
    try:
        yield lease
    finally:
        _held.reset(token)
        lease.release()
