"""Dependency health: each backend checked for real, with timings."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

from shared.engine.backends import Backends


def _timed(check: Callable[[], Any]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = check()
        state: dict[str, Any] = {"status": "up"}
        if detail is not None:
            state["detail"] = detail
    except Exception as exc:  # noqa: BLE001 - any failure means "down", with its reason
        state = {"status": "down", "error": f"{type(exc).__name__}: {exc}"[:300]}
    state["ms"] = round((time.perf_counter() - started) * 1000, 2)
    return state


def check(b: Backends) -> dict[str, Any]:
    """{"status": "ok"|"degraded", "dependencies": {name: {status, ms, ...}}}."""

    def storage() -> str:
        # A write/read round trip: a store that answers reads but refuses writes is down for us.
        key = f"ops/health/{socket.gethostname()}-{os.getpid()}.txt"
        stamp = str(time.time_ns()).encode()
        b.objects.put(key, stamp)
        found = b.objects.get(key)
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

    deps = {"queue": _timed(queue), "storage": _timed(storage), "index": _timed(index), "model": _timed(model)}
    healthy = all(d["status"] == "up" for d in deps.values())
    return {"status": "ok" if healthy else "degraded", "dependencies": deps}
