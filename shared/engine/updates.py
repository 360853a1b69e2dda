"""One optimistic read-modify-write for every mutable record (job, ledger, memory, re-submissions).

Blob Storage has no transactions; ETags give compare-and-swap. Every mutable record is
changed the same way: read it, compute the new value, write it create-only (when it did not
exist) or If-Match (when it did), and start over from a fresh read when another writer won.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from shared.ports import ObjectStore, PreconditionFailed

__all__ = ["update_json"]

T = TypeVar("T")


def update_json(
    objects: ObjectStore,
    key: str,
    change: Callable[[T | None], T | None],
    *,
    load: Callable[[bytes], T],
    dump: Callable[[T], bytes],
    durable: bool = True,
    current: tuple[T, str] | None = None,
) -> T | None:
    """Apply `change` to the record at `key` until the write wins; return the record as it now is.

    `change(current)` receives the parsed record (None when absent) and returns the new value, or
    None to leave the record as it is (nothing is written, and the current value is returned).
    It may run more than once, so it must compute from its argument only. durable=False: see
    ObjectStore.put (only for records a later write repairs). current: the record as the caller
    already read it and its ETag, tried first instead of a read (a stale one costs a retry).
    """
    while True:
        record: T | None
        etag: str | None
        if current is not None:
            (record, etag), current = current, None
        else:
            found = objects.get(key)
            record, etag = (load(found.data), found.etag) if found is not None else (None, None)
        new = change(record)
        if new is None:
            return record
        data = dump(new)
        try:
            if etag is None:
                objects.put_if_absent(key, data)
            else:
                objects.put(key, data, if_match=etag, durable=durable)
            return new
        except PreconditionFailed:
            continue
