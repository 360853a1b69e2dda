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
) -> T | None:
    """Apply `change` to the record at `key` until the write wins; return the record as it now is.

    `change(current)` receives the parsed record (None when absent) and returns the new value, or
    None to leave the record as it is (nothing is written, and the current value is returned).
    It may run more than once, so it must compute from its argument only. durable=False: see
    ObjectStore.put (only for records a later write repairs).
    """
    while True:
        found = objects.get(key)
        current = load(found.data) if found is not None else None
        new = change(current)
        if new is None:
            return current
        data = dump(new)
        try:
            if found is None:
                objects.put_if_absent(key, data)
            else:
                objects.put(key, data, if_match=found.etag, durable=durable)
            return new
        except PreconditionFailed:
            continue
