"""Maintenance the operations runbook asks for: backups, the dead-letter sweep, weekly checks, retention,
and the stuck-job detector.

Each task is a plain service function (backup.run_backup, sweep.sweep_dead_letters,
checks.run_weekly_checks, retention.apply_retention) that takes its own lease, so a timer, an
admin endpoint and the CLI can never run the same task twice at once. The timers in
function_app.py call run_scheduled(), which adds what only a scheduled run needs:
- past_due is logged and the task still runs (a missed backup is still wanted);
- each schedule occurrence runs once: under the task's lease, a run record
  ops/runs/{task}/{occurrence}.json is checked and written, so a second instance that fires for
  the same occurrence (at once, or a moment after the first finished) skips with a log line;
- what the run did is logged with its counts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from croniter import croniter
from pydantic import BaseModel

from shared.contracts import utcnow
from shared.engine.backends import Backends
from shared.maintenance import backup, checks, retention, stuck, sweep
from shared.maintenance.lease import LeaseHeld, exclusive
from shared.settings import resolve_binding_expression

log = logging.getLogger("agent.maintenance")

# A firing a few seconds early (clock skew between instances) still belongs to the coming occurrence.
OCCURRENCE_SLACK = timedelta(seconds=5)


@dataclass(frozen=True)
class ScheduledTask:
    name: str
    setting: str  # the app setting holding its NCRONTAB schedule
    lease: str
    run: Callable[[Backends, datetime], BaseModel]


TASKS: dict[str, ScheduledTask] = {
    t.name: t
    for t in (
        ScheduledTask("backup", "BACKUP_SCHEDULE", backup.LEASE, lambda b, now: backup.run_backup(b)),
        ScheduledTask("dlq_sweep", "DLQ_SWEEP_SCHEDULE", sweep.LEASE, lambda b, now: sweep.sweep_dead_letters(b)),
        ScheduledTask(
            "weekly_checks", "WEEKLY_CHECKS_SCHEDULE", checks.LEASE, lambda b, now: checks.run_weekly_checks(b, now)
        ),
        ScheduledTask(
            "retention", "RETENTION_SCHEDULE", retention.LEASE, lambda b, now: retention.apply_retention(b, now)
        ),
        ScheduledTask("stuck_jobs", "STUCK_JOBS_SCHEDULE", stuck.LEASE, lambda b, now: stuck.find_and_repair(b)),
    )
}


def occurrence(schedule: str, now: datetime) -> datetime:
    """The schedule occurrence a firing at `now` belongs to: the latest one at or before now (+ slack)."""
    when: datetime = croniter(schedule, now + OCCURRENCE_SLACK, second_at_beginning=True).get_prev(datetime)
    return when


def run_record_key(task: str, when: datetime) -> str:
    return f"ops/runs/{task}/{when:%Y%m%dT%H%M%SZ}.json"


def _counts(result: BaseModel) -> dict[str, int]:
    counts = getattr(result, "counts", None)
    return counts() if callable(counts) else {}


def run_scheduled(b: Backends, task: str, *, past_due: bool = False, now: datetime | None = None) -> BaseModel | None:
    """One timer firing of `task`: the result, or None when another instance has it (or already did it)."""
    spec = TASKS[task]
    now = now or utcnow()
    if past_due:
        log.warning(
            "timer %s is past due (the host was down or busy at its scheduled time); running it now",
            task,
            extra={"event": "timer_past_due"},
        )
    due = occurrence(resolve_binding_expression(f"%{spec.setting}%", b.settings), now)
    record = run_record_key(task, due)
    started = time.perf_counter()
    try:
        with exclusive(b.objects, spec.lease):
            if b.objects.get(record) is not None:
                log.info(
                    "timer %s: the %s run was already done by another instance; skipped",
                    task,
                    due.isoformat(),
                    extra={"event": "timer_skipped", "reason": "already_done"},
                )
                return None
            try:
                result = spec.run(b, now)
            except Exception:
                log.exception("timer %s failed", task, extra={"event": "timer_failed"})
                raise
            duration_ms = round((time.perf_counter() - started) * 1000, 3)
            b.objects.put(
                record,
                json.dumps(
                    {
                        "task": task,
                        "occurrence": due.isoformat(),
                        "fired_at": now.isoformat(),
                        "past_due": past_due,
                        "finished_at": utcnow().isoformat(),
                        "duration_ms": duration_ms,
                        "counts": _counts(result),
                    }
                ).encode(),
            )
    except LeaseHeld as held:
        log.info("timer %s skipped: %s", task, held, extra={"event": "timer_skipped", "reason": "lease_held"})
        return None
    counts = _counts(result)
    log.info(
        "timer %s done in %.0f ms: %s",
        task,
        duration_ms,
        ", ".join(f"{k}={v}" for k, v in counts.items()),
        extra={"event": "timer_done", "duration_ms": duration_ms},
    )
    return result
