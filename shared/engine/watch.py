"""In-process wake-ups for job watchers: the job record's write path calls `notify(job_id)`.

Progress events are read from the job record (shared/services/events.py); this only tells a
waiting reader of the same process to read again now instead of at its next poll. Writers in
other processes cannot reach these listeners, so readers still re-read on a bounded interval.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["listen", "notify"]

_lock = threading.Lock()
_listeners: dict[str, set[Callable[[], None]]] = {}


def notify(job_id: str) -> None:
    """Wake every listener of job_id in this process (cheap when there is none)."""
    with _lock:
        callbacks = list(_listeners.get(job_id, ()))
    for callback in callbacks:
        callback()


@contextmanager
def listen(job_id: str, callback: Callable[[], None]) -> Iterator[None]:
    """Call callback (from the writer's thread: keep it short) after each write of job_id's record."""
    with _lock:
        _listeners.setdefault(job_id, set()).add(callback)
    try:
        yield
    finally:
        with _lock:
            found = _listeners.get(job_id)
            if found is not None:
                found.discard(callback)
                if not found:
                    del _listeners[job_id]
