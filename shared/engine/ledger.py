"""Token ledgers: per tenant and month, one record per job plus a month total kept incrementally.

Records (both in the ledgers container):
  ledgers/{YYYY-MM}/{tenant}.json                 the month total, plus the jobs it applied lately
  ledgers/jobs/{YYYY-MM}/{tenant}/{job_id}.json   a job's usage as of a step: {usage..., "step": n}

A job's figure is *set* (not added) from its checkpoints, monotonic by step, so a redelivered
step can neither count twice nor move the figure back. The month total changes by the job's
delta, once per committed usage change (one write): for each unfinished job, and each job that
finished in the last RECENT_SECONDS, the total record keeps the step and usage it applied. That
makes applying a step idempotent (a replay finds its step applied) and gives the delta's base.
The job's own record is written after the total; once the total forgets a job, that record is
its base (a late replay of its final step applies nothing).

So the cost of a step or a submit does not grow with the month's volume: the total record holds
the jobs in flight and those that finished within the hour, never the month's history.
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
# Budget checks (each step, each submit) accept a month total this old: a budget stops jobs "at
# the next step", not mid-flight, and a second's lag is far below one step's spend.
BUDGET_STALENESS_SECONDS = 1.0
# How long the total remembers what it applied for a finished job: well past the broker's
# redelivery of a final step (lock duration x max deliveries), so a replay finds its own entry.
RECENT_SECONDS = 3600.0
# An unfinished job the total has not heard from in this long is forgotten too (a job stuck that
# long has been ended by the sweep); its next record, if any, takes its base from its own record.
IDLE_SECONDS = 7 * 86400.0

_FIELDS = ("prompt_tokens", "completion_tokens", "cached_tokens")


def _dump(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


def month_of(when: datetime | None = None) -> str:
    return (when or utcnow()).strftime("%Y-%m")


def _usage(entry: dict[str, Any]) -> Usage:
    return Usage(**{f: int(entry.get(f, 0)) for f in _FIELDS})


def _entry(usage: Usage, step: int, **extra: Any) -> dict[str, Any]:
    return {**{f: getattr(usage, f) for f in _FIELDS}, "step": step, **extra}


def _tokens(entry: dict[str, Any]) -> int:
    return int(entry.get("prompt_tokens", 0)) + int(entry.get("completion_tokens", 0))


class UsageLedger:
    def __init__(self, objects: ObjectStore, *, recent_seconds: float = RECENT_SECONDS) -> None:
        self.objects = objects
        self.recent_seconds = recent_seconds
        # Month totals this instance last wrote or read, for callers that accept a second's staleness.
        self._recent: dict[tuple[str, str], tuple[float, Usage]] = {}

    @staticmethod
    def _total_key(tenant: str, month: str) -> str:
        return layout.ledger_key(month, tenant)

    @staticmethod
    def _job_key(tenant: str, month: str, job_id: str) -> str:
        return layout.ledger_job_key(month, tenant, job_id)

    def _read_job(self, tenant: str, month: str, job_id: str) -> dict[str, Any] | None:
        found = self.objects.get(self._job_key(tenant, month, job_id))
        return json.loads(found.data) if found is not None else None

    def record(
        self, tenant: str, month: str, job_id: str, usage: Usage, step: int, *, final: bool = True
    ) -> tuple[int, int]:
        """Set the job's usage as of step; return the tenant's month total before and after.

        Monotonic by step: a redelivered older step (a stranded message, a duplicate) never
        moves the job's entry or the month total back to an earlier figure. The job's own record
        follows the total (a replay after a crash between the two finds the total applied and
        writes the job's record). While the job runs (final=False) neither waits for its own
        fsync: lost to an OS crash, the next record of the job applies its delta from the base
        the total still holds; the final record must be durable.
        """
        now = time.time()
        totals: list[int] = []

        def change(record: dict[str, Any] | None) -> dict[str, Any] | None:
            record = _upgraded(record)
            total = dict(record["total"])
            before = _tokens(total)
            totals[:] = [before, before]
            recent: dict[str, dict[str, Any]] = record["recent"]
            applied = recent.get(job_id)
            if applied is None:
                # Not applied lately: its base is what its own record (written after the total) says.
                applied = self._read_job(tenant, month, job_id) or record["legacy"].get(job_id)
            if applied is not None and int(applied.get("step", 0)) >= step:
                return None
            base = applied or {}
            for f in _FIELDS:
                total[f] = int(total.get(f, 0)) + getattr(usage, f) - int(base.get(f, 0))
            totals[1] = _tokens(total)
            kept = {j: e for j, e in recent.items() if j != job_id and _kept(e, now, self.recent_seconds)}
            kept[job_id] = _entry(usage, step, at=now, **({"final": True} if final else {}))
            return {**record, "total": total, "recent": kept}

        # A running job's change need not wait for its fsync: lost to an OS crash, the next record
        # of the job applies its delta from the base the total still holds. The final one must.
        written = update_json(
            self.objects, self._total_key(tenant, month), change, load=json.loads, dump=_dump, durable=final
        )
        if written is not None:
            self._remember(tenant, month, _usage(_upgraded(written)["total"]))
        self._set_job(tenant, month, job_id, usage, step, durable=final)
        return totals[0], totals[1]

    def _set_job(self, tenant: str, month: str, job_id: str, usage: Usage, step: int, *, durable: bool) -> None:
        def change(entry: dict[str, Any] | None) -> dict[str, Any] | None:
            if entry is not None and int(entry.get("step", 0)) >= step:
                return None
            return _entry(usage, step)

        update_json(
            self.objects, self._job_key(tenant, month, job_id), change, load=json.loads, dump=_dump, durable=durable
        )

    def total(self, tenant: str, month: str, *, max_age: float = 0.0) -> Usage:
        """The tenant's month total; with max_age, a figure this instance saw that recently will do."""
        if max_age:
            seen = self._recent.get((tenant, month))
            if seen is not None and time.monotonic() - seen[0] <= max_age:
                return seen[1]
        found = self.objects.get(self._total_key(tenant, month))
        record = _upgraded(json.loads(found.data) if found is not None else None)
        return self._remember(tenant, month, _usage(record["total"]))

    def _remember(self, tenant: str, month: str, total: Usage) -> Usage:
        self._recent[(tenant, month)] = (time.monotonic(), total)
        return total

    def by_job(self, tenant: str, month: str) -> dict[str, Usage]:
        """Every job's usage in the month (reads one record per job: for reports, not the hot path)."""
        found = self.objects.get(self._total_key(tenant, month))
        record = _upgraded(json.loads(found.data) if found is not None else None)
        entries: dict[str, dict[str, Any]] = dict(record["legacy"])
        prefix = layout.ledger_jobs_prefix(month, tenant)
        for key in self.objects.list(prefix):
            stored = self.objects.get(key)
            if stored is not None:
                entries[key[len(prefix) : -len(".json")]] = json.loads(stored.data)
        for job_id, entry in record["recent"].items():  # running jobs live only here
            if int(entry.get("step", 0)) >= int(entries.get(job_id, {}).get("step", 0)):
                entries[job_id] = entry
        return {job_id: _usage(entry) for job_id, entry in entries.items()}

    def tenants(self, month: str) -> dict[str, Usage]:
        prefix = f"{layout.LEDGERS.name}/{month}/"
        return {
            key[len(prefix) : -len(".json")]: self.total(key[len(prefix) : -len(".json")], month)
            for key in self.objects.list(prefix)
        }


def _kept(entry: dict[str, Any], now: float, recent_seconds: float) -> bool:
    """Whether the total still remembers a job: finished within recent_seconds, or unfinished and not idle."""
    age = now - float(entry.get("at", 0))
    return age < (recent_seconds if entry.get("final") else IDLE_SECONDS)


def _upgraded(record: dict[str, Any] | None) -> dict[str, Any]:
    """The month-total record, from nothing or from the earlier one-record-per-month format.

    That format kept every job's usage in one "jobs" map; it is read as the total plus a frozen
    "legacy" map (each job's base when it records again), never rewritten job by job.
    """
    if record is None:
        return {"total": {f: 0 for f in _FIELDS}, "recent": {}, "legacy": {}}
    if "total" in record:
        return {"recent": {}, "legacy": {}, **record}
    legacy: dict[str, dict[str, Any]] = record.get("jobs", {})
    total = {f: sum(int(e.get(f, 0)) for e in legacy.values()) for f in _FIELDS}
    return {
        "tenant": record.get("tenant"),
        "month": record.get("month"),
        "total": total,
        "recent": {},
        "legacy": legacy,
    }
