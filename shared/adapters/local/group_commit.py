"""Group commit: the writers of one SQLite file in this process share transactions and fsyncs.

Whoever finds no commit running leads one: it takes every waiting item, commits them together
(one transaction, at most one fsync), and leads again for the items that arrived meanwhile.
Same-process writers queue here instead of on SQLite's busy handler, which sleeps in 1-100 ms
steps; other processes still meet SQLite's lock. The object store's writes and the queue's
fsync'd sends each keep one group per file.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

__all__ = ["GroupCommit", "Waiting"]


class Waiting(Protocol):
    """An item waiting for the commit that writes it; the commit sets error (if it failed), then done."""

    done: threading.Event
    error: BaseException | None


W = TypeVar("W", bound=Waiting)


class GroupCommit(Generic[W]):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: list[W] = []
        self.leading = False

    def run(
        self, item: W, commit: Callable[[list[W]], None], wait_seconds: float, stalled: Callable[[], Exception]
    ) -> None:
        """Have item committed (leading the commit if none runs); raise what its commit raised.

        An item still queued after wait_seconds is withdrawn and stalled() raised: behind a stuck
        commit, every other writer of this process would otherwise queue without end. An item a
        commit has taken waits for it: that commit is itself bounded by SQLite's busy timeout.
        """
        with self.lock:
            self.pending.append(item)
            lead = not self.leading
            self.leading = True
        if lead:
            self._lead(commit)
        elif not item.done.wait(wait_seconds):
            with self.lock:
                queued = item in self.pending
                if queued:
                    self.pending.remove(item)
            if queued:
                raise stalled()
            item.done.wait()
        if item.error is not None:
            raise item.error

    def _lead(self, commit: Callable[[list[W]], None]) -> None:
        while True:
            with self.lock:
                batch, self.pending = self.pending, []
                if not batch:
                    self.leading = False
                    return
            try:
                commit(batch)
            except BaseException as exc:  # noqa: BLE001 - told to each item of the batch, whose caller raises it
                for item in batch:
                    item.error = exc
            finally:
                for item in batch:
                    item.done.set()

    def reset(self) -> None:
        """In a forked child: the parent's leader does not exist there."""
        self.__init__()  # type: ignore[misc]
