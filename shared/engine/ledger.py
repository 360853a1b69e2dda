"""Token ledgers: per tenant and month, each job's usage *set* (not added) from its checkpoints.

Setting a job's figure is idempotent and monotonic by step, so a redelivered step can neither
count twice nor move the figure back, and the month's total is the sum over jobs.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from shared.contracts import Usage, utcnow
from shared.engine import layout
from shared.engine.updates import update_json
from shared.ports import ObjectStore

# The share of a tenant's monthly budget past which the runbook's token alert fires.
BUDGET_WARNING_RATIO = 0.8


def _dump(ledger: dict[str, Any]) -> bytes:
    return json.dumps(ledger).encode()


def month_of(when: datetime | None = None) -> str:
    return (when or utcnow()).strftime("%Y-%m")


class UsageLedger:
    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects
        # Month totals this instance last wrote or read, for callers that accept a second's staleness.
        self._recent: dict[tuple[str, str], tuple[float, Usage]] = {}
        self._parsed: dict[tuple[str, str], tuple[str, dict[str, Usage]]] = {}

    @staticmethod
    def _key(tenant: str, month: str) -> str:
        return layout.ledger_key(month, tenant)

    def _read(self, tenant: str, month: str) -> tuple[dict[str, dict[str, int]], str | None]:
        found = self.objects.get(self._key(tenant, month))
        if found is None:
            return {}, None
        return json.loads(found.data)["jobs"], found.etag

    def record(self, tenant: str, month: str, job_id: str, usage: Usage, step: int) -> tuple[int, int]:
        """Set the job's usage as of step; return the tenant's month total before and after.

        Monotonic by step: a redelivered older step (a stranded message, a duplicate) never
        moves the job's entry back to an earlier total.
        """
        entry = {**usage.model_dump(), "step": step}
        totals: list[int] = []

        def change(ledger: dict[str, Any] | None) -> dict[str, Any] | None:
            jobs: dict[str, dict[str, int]] = dict(ledger["jobs"]) if ledger else {}
            before = sum(j["prompt_tokens"] + j["completion_tokens"] for j in jobs.values())
            old = jobs.get(job_id)
            totals[:] = [before, before]
            if old is not None and old.get("step", 0) >= step:
                return None
            jobs[job_id] = entry
            if old is not None:
                before -= old["prompt_tokens"] + old["completion_tokens"]
            totals[1] = before + usage.total_tokens
            return {"tenant": tenant, "month": month, "jobs": jobs}

        written = update_json(self.objects, self._key(tenant, month), change, load=json.loads, dump=_dump)
        if written is not None:
            self._remember(tenant, month, written["jobs"])
        return totals[0], totals[1]

    def total(self, tenant: str, month: str, *, max_age: float = 0.0) -> Usage:
        """The tenant's month total; with max_age, a figure this instance saw that recently will do."""
        if max_age:
            seen = self._recent.get((tenant, month))
            if seen is not None and time.monotonic() - seen[0] <= max_age:
                return seen[1]
        jobs, _ = self._read(tenant, month)
        return self._remember(tenant, month, jobs)

    def _remember(self, tenant: str, month: str, jobs: dict[str, dict[str, int]]) -> Usage:
        total = Usage(
            prompt_tokens=sum(e["prompt_tokens"] for e in jobs.values()),
            completion_tokens=sum(e["completion_tokens"] for e in jobs.values()),
            cached_tokens=sum(e.get("cached_tokens", 0) for e in jobs.values()),
        )
        self._recent[(tenant, month)] = (time.monotonic(), total)
        return total

    def by_job(self, tenant: str, month: str) -> dict[str, Usage]:
        """Each job's usage in the tenant's month (a new dict; do not change the Usage values)."""
        found = self.objects.get(self._key(tenant, month))
        if found is None:
            return {}
        # A month's ledger holds every job of the month: parse it once per version (ETag), not per read.
        cached = self._parsed.get((tenant, month))
        if cached is not None and cached[0] == found.etag:
            return dict(cached[1])
        jobs = json.loads(found.data)["jobs"]
        parsed = {job_id: Usage.model_validate(entry) for job_id, entry in jobs.items()}
        self._parsed[(tenant, month)] = (found.etag, parsed)
        return dict(parsed)

    def tenants(self, month: str) -> dict[str, Usage]:
        prefix = f"{layout.LEDGERS.name}/{month}/"
        return {
            key[len(prefix) : -len(".json")]: self.total(key[len(prefix) : -len(".json")], month)
            for key in self.objects.list(prefix)
        }
