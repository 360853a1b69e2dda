"""Token ledgers: per tenant and month, each job's usage *set* (not added) from its checkpoints.

Setting a job's figure is idempotent, so a redelivered step cannot count twice, and the
month's total is the sum over jobs.
"""

from __future__ import annotations

import json
import time
from datetime import datetime

from shared.contracts import Usage, utcnow
from shared.ports import ObjectStore, PreconditionFailed


def month_of(when: datetime | None = None) -> str:
    return (when or utcnow()).strftime("%Y-%m")


class UsageLedger:
    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects
        # Month totals this instance last wrote or read, for callers that accept a second's staleness.
        self._recent: dict[tuple[str, str], tuple[float, Usage]] = {}

    @staticmethod
    def _key(tenant: str, month: str) -> str:
        return f"ledgers/{month}/{tenant}.json"

    def _read(self, tenant: str, month: str) -> tuple[dict[str, dict[str, int]], str | None]:
        found = self.objects.get(self._key(tenant, month))
        if found is None:
            return {}, None
        return json.loads(found.data)["jobs"], found.etag

    def record(self, tenant: str, month: str, job_id: str, usage: Usage) -> tuple[int, int]:
        """Set the job's usage for the month; return the tenant's month total before and after."""
        entry = usage.model_dump()
        while True:
            jobs, etag = self._read(tenant, month)
            before = sum(j["prompt_tokens"] + j["completion_tokens"] for j in jobs.values())
            if jobs.get(job_id) == entry:
                return before, before
            old = jobs.get(job_id, {"prompt_tokens": 0, "completion_tokens": 0})
            jobs[job_id] = entry
            after = before - old["prompt_tokens"] - old["completion_tokens"] + usage.total_tokens
            data = json.dumps({"tenant": tenant, "month": month, "jobs": jobs}).encode()
            try:
                if etag is None:
                    self.objects.put_if_absent(self._key(tenant, month), data)
                else:
                    self.objects.put(self._key(tenant, month), data, if_match=etag)
                self._remember(tenant, month, jobs)
                return before, after
            except PreconditionFailed:
                continue

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
        jobs, _ = self._read(tenant, month)
        return {job_id: Usage.model_validate(entry) for job_id, entry in jobs.items()}

    def tenants(self, month: str) -> dict[str, Usage]:
        prefix = f"ledgers/{month}/"
        return {key[len(prefix):-len(".json")]: self.total(key[len(prefix):-len(".json")], month)
                for key in self.objects.list(prefix)}
