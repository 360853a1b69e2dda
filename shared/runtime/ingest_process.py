"""Ingestion batches of the embedded runtime run in a child process, not beside the API's event loop.

Extraction and chunking are pure-Python CPU work. In the API's process they share its GIL: on a
busy 2-core machine the thread holding it may be descheduled, and every request waits for it
(measured: GET /api/jobs up to 356 ms during a 20,000-document ingestion). In a child process
they share nothing but the SQLite files, which are safe across processes; the API process stays
idle enough to answer at once.

The consumer still peek-locks the message, renews its lock and settles it; only the handler body
(`ingestion.handle_batch`) runs in the child, on the child's own backends built from the same
settings (the child inherits the environment). An exception in the child travels back and the
message is abandoned, as in process. If the child dies, the pool is rebuilt and the message is
redelivered; if the runtime dies, the child exits within a second (it watches its parent), and a
batch it was in the middle of is redone idempotently by the next delivery.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from shared.runtime.worker_processes import watch_parent

log = logging.getLogger("agent.runtime")


def _start_child(parent: int) -> None:
    watch_parent(parent)


def _run_batch(body: bytes, delivery_count: int) -> None:
    from shared.bootstrap import get_backends
    from shared.services.ingestion import handle_batch

    handle_batch(get_backends(), body, delivery_count)


class IngestProcess:
    """One child process running ingestion batches one at a time (batches of a job are sequential anyway)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # spawn, not fork: the runtime has threads and open SQLite connections a fork would copy.
                self._pool = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_child,
                    initargs=(os.getpid(),),
                )
            return self._pool

    def run(self, body: bytes, delivery_count: int) -> None:
        """Handle one ingestion message in the child; raises what the handler raised (the message is abandoned)."""
        pool = self._executor()
        try:
            pool.submit(_run_batch, body, delivery_count).result()
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            log.warning("the ingestion process died; it is restarted and the batch redelivered")
            raise

    def stop(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
