"""Dependency health: each backend checked for real, with timings, in bounded time.

Each check runs on its own probe thread (kept between checks) and the whole answer is given within
CHECK_DEADLINE_SECONDS: a dependency that has not answered by then is reported down ("no answer within ..."), so a
locked database or a hung connection makes health say so at once instead of hanging with it.

Worker pools. The embedded runtime registers each queue consumer here (register_worker_pool);
a pool with fewer live workers than configured, or without its lock renewer, makes health
degraded. In Azure the Functions host owns its workers and nothing is registered.

Caching. HealthCache answers from one check for a few seconds (HEALTH_CACHE_SECONDS), and concurrent
callers share the check that is running: anonymous probes (a load balancer, an uptime monitor,
anyone) never write a blob or call the model more than once per period, which is also what limits
their rate. Each storage probe writes its own key, so concurrent probes never read back each
other's object and report a false "down".
"""

from __future__ import annotations

import asyncio
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from shared.engine.backends import Backends

__all__ = [
    "CHECK_DEADLINE_SECONDS",
    "HealthCache",
    "WorkerPoolState",
    "check",
    "register_worker_pool",
    "unregister_worker_pool",
]

# Under the 1 s an operator's probe (or a load balancer's) allows for an answer.
CHECK_DEADLINE_SECONDS = 0.6


@dataclass(frozen=True)
class WorkerPoolState:
    configured: int
    alive: int
    lock_renewer: bool

    @property
    def full(self) -> bool:
        return self.alive >= self.configured and self.lock_renewer


_pools: dict[str, Callable[[], WorkerPoolState]] = {}
_pools_lock = threading.Lock()


def register_worker_pool(name: str, state: Callable[[], WorkerPoolState]) -> None:
    """Report this pool in every health check from now on (the embedded runtime's consumers)."""
    with _pools_lock:
        _pools[name] = state


def unregister_worker_pool(name: str) -> None:
    with _pools_lock:
        _pools.pop(name, None)


class _Timed:
    """One check, run by a probe thread: a hung dependency never holds the health answer."""

    def __init__(self, check: Callable[[], Any]) -> None:
        self.check = check
        self.started_at = time.perf_counter()
        self.state: dict[str, Any] | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            detail = self.check()
            state: dict[str, Any] = {"status": "up"}
            if detail is not None:
                state["detail"] = detail
        except Exception as exc:  # noqa: BLE001 - any failure means "down", with its reason
            state = {"status": "down", "error": f"{type(exc).__name__}: {exc}"[:300]}
        state["ms"] = round((time.perf_counter() - self.started_at) * 1000, 2)
        self.state = state


class _Probes:
    """Daemon threads that run checks, kept between health checks.

    Starting a thread waits for it to run, which under load (the GIL busy with requests) cost more than
    the four checks themselves. A check that hangs keeps its thread; the next check finds no idle
    thread and starts another, so a hung dependency never delays the others' checks.
    """

    MAX_IDLE = 8

    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue[_Timed] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def run(self, task: _Timed) -> None:
        with self._lock:
            start = self._idle == 0
            if not start:
                self._idle -= 1  # that idle thread takes this task (or an equivalent one)
        self._tasks.put(task)
        if start:
            threading.Thread(target=self._work, daemon=True, name="health-check").start()

    def _work(self) -> None:
        while True:
            task = self._tasks.get()
            task.run()
            with self._lock:
                keep = self._idle < self.MAX_IDLE
                if keep:
                    self._idle += 1  # before the answer: the caller's next check finds this thread idle
            task.done.set()
            if not keep:
                return


_probes = _Probes()


def _run_all(checks: dict[str, Callable[[], Any]], deadline_seconds: float) -> dict[str, dict[str, Any]]:
    tasks = {name: _Timed(fn) for name, fn in checks.items()}
    for task in tasks.values():
        _probes.run(task)
    deadline = time.perf_counter() + deadline_seconds
    results: dict[str, dict[str, Any]] = {}
    for name, task in tasks.items():
        task.done.wait(max(0.0, deadline - time.perf_counter()))
        results[name] = task.state or {
            "status": "down",
            "error": f"no answer within {deadline_seconds}s",
            "ms": round(deadline_seconds * 1000, 2),
        }
    return results


def check(b: Backends, *, deadline_seconds: float = CHECK_DEADLINE_SECONDS) -> dict[str, Any]:
    """{"status": "ok"|"degraded", "dependencies": {name: {status, ms, ...}}, "workers": {pool: {...}}}."""

    def storage() -> str:
        # A write/read round trip: a store that answers reads but refuses writes is down for us.
        # One key per probe: concurrent probes (threads, instances) never read each other's object.
        key = f"ops/health/{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}.txt"
        stamp = str(time.time_ns()).encode()
        # Without fsyncs: a full disk refuses the write all the same, and a delete an OS crash undoes leaves
        # a small object that the ops/ retention removes.
        b.objects.put(key, stamp, durable=False)
        found = b.objects.get(key)
        b.objects.delete(key, durable=False)
        if found is None or found.data != stamp:
            raise RuntimeError("read back a different object than written")
        return "write/read round trip"

    def queue() -> dict[str, int]:
        b.queue.ping()
        counts = b.queue.counts()
        return {"active": counts.active, "scheduled": counts.scheduled, "dead_lettered": counts.dead_lettered}

    def index() -> dict[str, int]:
        b.index.ping()
        return {"chunks": b.index.count()}

    def model() -> str:
        b.model.ping()
        return b.model.name + (" (offline)" if b.model.offline else "")

    deps = _run_all({"queue": queue, "storage": storage, "index": index, "model": model}, deadline_seconds)
    healthy = all(d["status"] == "up" for d in deps.values())
    result: dict[str, Any] = {"status": "ok", "dependencies": deps}
    with _pools_lock:
        pools = {name: state() for name, state in _pools.items()}
    if pools:
        result["workers"] = {
            name: {
                "status": "up" if p.full else "down",
                "configured": p.configured,
                "alive": p.alive,
                "lock_renewer": "up" if p.lock_renewer else "down",
            }
            for name, p in pools.items()
        }
        healthy = healthy and all(p.full for p in pools.values())
    result["status"] = "ok" if healthy else "degraded"
    return result


class _Run:
    """One check: started by one caller, shared by every caller whose freshness it meets.

    Its outcome is a concurrent.futures.Future, so threads wait with result() and the event loop
    with asyncio.wrap_future, neither holding a thread; it is marked running from the start, so a
    caller that gives up (a cancelled request) cannot cancel it for the others.
    """

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.outcome: Future[dict[str, Any]] = Future()
        self.outcome.set_running_or_notify_cancel()

    def execute(self, b: Backends, cache: HealthCache) -> None:
        try:
            result, error = check(b), None
        except BaseException as exc:  # noqa: BLE001 - every caller sharing this run raises it
            result, error = None, exc
        with cache._lock:
            cache.checks += 1  # before anyone sharing it is told: they may read the count
        if error is not None:
            self.outcome.set_exception(error)
        else:
            assert result is not None
            self.outcome.set_result(result)


class HealthCache:
    """One check answers every caller for max_age_seconds; concurrent callers share the running one.

    fresh=True (operators) wants a check that was still running when the call came: the one running
    then (it finishes after the call, so what it reports was seen at most CHECK_DEADLINE_SECONDS before),
    or a new one. Callers that arrive during a check share it rather than queue for one check each, and
    get_async's callers wait for it on the event loop without holding a thread each.
    """

    def __init__(self, max_age_seconds: float) -> None:
        self.max_age_seconds = max_age_seconds
        self._lock = threading.Lock()
        self._last: _Run | None = None  # the latest run started: running, or the one that answers now
        self.checks = 0  # how many real checks ran (tests and benchmarks read it)

    def _pick(self, fresh: bool) -> tuple[_Run, bool]:
        """The run that answers a call made now, and whether this caller must execute it (a new one)."""
        asked = time.monotonic()
        with self._lock:
            last = self._last
            if last is not None:
                if not last.outcome.done():
                    return last, False  # running: it finishes after this call, so it is fresh for anyone
                if last.outcome.exception() is None and not fresh and last.started >= asked - self.max_age_seconds:
                    return last, False
            run = self._last = _Run()
            return run, True

    def get(self, b: Backends, *, fresh: bool = False) -> dict[str, Any]:
        """A result at most max_age_seconds old; with fresh=True, from a check that finished after this call."""
        run, mine = self._pick(fresh)
        if mine:
            run.execute(b, self)
        return run.outcome.result()  # check() answers within its deadline: a hung dependency is reported down

    async def get_async(self, b: Backends, *, fresh: bool = False) -> dict[str, Any]:
        """get() for the event loop: a new check runs on a worker thread, and waiting for one holds no thread."""
        run, mine = self._pick(fresh)
        if mine:
            await asyncio.to_thread(run.execute, b, self)
            return run.outcome.result()
        return await asyncio.wrap_future(run.outcome)
