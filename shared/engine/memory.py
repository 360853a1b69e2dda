"""Short-term session memory: a session's recent findings, bounded in count, size and age.

Kept in storage so any instance can serve the session; a small in-process cache saves a
read per job. Expiry is checked on every recall, cached or not, so expired memory is
never used.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from shared.contracts import MemoryItem
from shared.engine import layout
from shared.engine.updates import update_json
from shared.ports import ObjectStore

MAX_ITEM_CHARS = 1000
CACHE_SECONDS = 5.0  # another instance's writes show up here at most this late


def _dump(memory: dict[str, Any]) -> bytes:
    return json.dumps(memory, ensure_ascii=False).encode()


class SessionMemory:
    def __init__(
        self,
        objects: ObjectStore,
        *,
        ttl_seconds: float,
        max_items: int,
        cache_size: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.objects = objects
        self.ttl = ttl_seconds
        self.max_items = max_items
        self.clock = clock
        self._cache: OrderedDict[str, tuple[float, list[dict[str, object]]]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @staticmethod
    def _key(tenant: str, session_id: str) -> str:
        return layout.memory_key(tenant, session_id)

    def _fresh(self, items: list[dict[str, object]]) -> list[dict[str, object]]:
        horizon = self.clock() - self.ttl
        return [i for i in items if float(i["at"]) > horizon]  # type: ignore[arg-type]

    def recall(self, tenant: str, session_id: str) -> list[MemoryItem]:
        """The session's fresh entries, oldest first, each with its origin (job, kind, time)."""
        key = self._key(tenant, session_id)
        with self._lock:
            cached = self._cache.get(key)
        if cached is None or self.clock() - cached[0] > CACHE_SECONDS:
            found = self.objects.get(key)
            items = json.loads(found.data)["items"] if found else []
            self._remember_in_cache(key, items)
        else:
            items = cached[1]
        return [MemoryItem.model_validate(i) for i in self._fresh(items)]

    def remember(
        self,
        tenant: str,
        session_id: str,
        findings: Sequence[str],
        *,
        notes: Sequence[str] = (),
        job_id: str | None = None,
    ) -> None:
        """Append a job's findings (verified quotes) and notes (a text already remembered is refreshed,
        not repeated), each with where it came from."""
        key = self._key(tenant, session_id)
        new: dict[str, str] = {}
        for kind, texts in (("finding", findings), ("note", notes)):
            for t in texts:
                t = t.strip()[:MAX_ITEM_CHARS]
                if t:
                    new.setdefault(t, kind)
        if not new:
            return

        def change(memory: dict[str, Any] | None) -> dict[str, Any]:
            items = [i for i in self._fresh(memory["items"] if memory else []) if i["text"] not in new]
            now = self.clock()
            items.extend({"text": t, "at": now, "job_id": job_id, "kind": kind} for t, kind in new.items())
            return {"items": items[-self.max_items :]}

        written = update_json(self.objects, key, change, load=json.loads, dump=_dump)
        assert written is not None  # change always writes
        self._remember_in_cache(key, written["items"])

    def _remember_in_cache(self, key: str, items: list[dict[str, object]]) -> None:
        with self._lock:
            self._cache[key] = (self.clock(), items)
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
