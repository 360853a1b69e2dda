"""More than one process running the queue triggers: FUNCTIONS_WORKER_PROCESS_COUNT, as Azure reads it.

A step is CPU work in Python, and a process's threads share one interpreter lock: measured on
2 cores, 8 workers in one process gave fewer steps/s than 1 (each of a step's SQLite calls
releases the lock and a waiting thread takes it over). Azure's Python worker scales with
FUNCTIONS_WORKER_PROCESS_COUNT processes per instance; the embedded runtime honours the same
setting. The runtime itself is worker 1 (HTTP, timers and its queue consumers); each further worker
is `python -m shared.runtime --steps-only` on the same DATA_DIR and environment, with its own
consumers, its own ingestion child, and no HTTP or timers. maxConcurrentCalls stays what it is in
Azure, a bound per instance: the processes share it (8 calls over 3 processes: 3, 3 and 2), so
steps in flight, and with them jobs started, are bounded by the same number however many
processes serve them. The embedded queue's claims are transactions across processes, so each
message goes to one worker anywhere.

The runtime supervises them: a worker that exits is started again (after a pause that grows while
it keeps dying at once), and health counts the workers of live processes. A worker watches its
parent and exits when orphaned; the steps it had in hand are redelivered when their locks expire,
as after any crash. Workers log to the runtime's own log file, as `agentctl` does.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("agent.runtime")

MAX_PROCESSES = 10  # Azure's own limit for FUNCTIONS_WORKER_PROCESS_COUNT
_QUICK_EXIT_SECONDS = 5.0  # a worker that dies sooner than this after its start is restarted after a pause
_MAX_PAUSE_SECONDS = 30.0


def process_count(value: str | None) -> int:
    """FUNCTIONS_WORKER_PROCESS_COUNT as a number of processes (1 when unset), or a clear error."""
    if value is None or not value.strip():
        return 1
    try:
        count = int(value)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_PROCESSES:
        raise ValueError(
            f"FUNCTIONS_WORKER_PROCESS_COUNT must be a whole number from 1 to {MAX_PROCESSES}, not {value!r}"
        )
    return count


def calls_per_process(max_calls: int, processes: int) -> list[int]:
    """maxConcurrentCalls shared by the processes, the first ones taking the remainder; never a process with 0."""
    processes = max(1, min(processes, max_calls))
    return [max_calls // processes + (1 if i < max_calls % processes else 0) for i in range(processes)]


def watch_parent(parent: int) -> None:
    """Exit when orphaned: the runtime is gone, and the messages in hand will be redelivered."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class _Worker:
    def __init__(self, index: int, calls: int) -> None:
        self.index = index
        self.calls = calls
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.pause = 0.0  # the last pause before a restart; doubles while the worker keeps dying at once
        self.restart_at: float | None = None  # set once an exit is seen, until the restart


class WorkerProcesses:
    """The worker processes after the first (the runtime itself) and their supervisor thread.

    calls: maxConcurrentCalls of workers 2, 3, ... (see calls_per_process).
    """

    def __init__(self, calls: list[int], root: Path) -> None:
        self.root = root
        self._workers = [_Worker(index, n) for index, n in enumerate(calls, start=2)]
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._supervisor: threading.Thread | None = None

    def _spawn(self, worker: _Worker) -> None:
        worker.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shared.runtime",
                "--steps-only",
                "--worker",
                str(worker.index),
                "--parent",
                str(os.getpid()),
            ],
            cwd=self.root,
            env=os.environ.copy(),
        )
        worker.started = time.monotonic()

    def start(self) -> None:
        with self._lock:
            for worker in self._workers:
                self._spawn(worker)
        self._supervisor = threading.Thread(target=self._supervise, name="worker-supervisor", daemon=True)
        self._supervisor.start()

    def _supervise(self) -> None:
        while not self._stopping.wait(0.5):
            with self._lock:
                for worker in self._workers:
                    self._check(worker)

    def _check(self, worker: _Worker) -> None:
        proc = worker.proc
        if proc is None or proc.poll() is None:
            return
        now = time.monotonic()
        if worker.restart_at is None:  # the first look at this exit
            lived = now - worker.started
            worker.pause = min(_MAX_PAUSE_SECONDS, max(1.0, 2 * worker.pause)) if lived < _QUICK_EXIT_SECONDS else 0.0
            worker.restart_at = now + worker.pause
            log.error(
                "worker process %s (pid %s) exited with code %s after %.0f s; starting it again%s",
                worker.index,
                proc.pid,
                proc.returncode,
                lived,
                f" in {worker.pause:.0f} s" if worker.pause else "",
                extra={"event": "worker_process_exited", "exit_code": proc.returncode},
            )
        if now < worker.restart_at:
            return
        worker.restart_at = None
        self._spawn(worker)

    def state(self) -> tuple[int, int]:
        """(configured, alive) concurrent calls of these processes; a process counts while it runs."""
        with self._lock:
            alive = sum(w.calls for w in self._workers if w.proc is not None and w.proc.poll() is None)
        return sum(w.calls for w in self._workers), alive

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM each worker (they let their steps finish) and wait; kill what outlives the timeout."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
        procs = [w.proc for w in self._workers if w.proc is not None and w.proc.poll() is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
