"""Schedules: a tenant's recurring research jobs, on six-field NCRONTAB expressions like the timers.

One timer (function_app.py `schedules`) calls `fire_due`. For each schedule it takes the latest
occurrence that is due and not yet submitted, and submits one job with the occurrence time in its
Idempotency-Key: two instances firing together, or one firing twice, create one job for it. After
downtime only the latest missed occurrence runs (once), not one job per missed occurrence.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agents.policy import resolve, tenant_limits
from shared.contracts import PolicyOverrides, Text, utcnow
from shared.engine import layout
from shared.engine.backends import Backends
from shared.engine.updates import update_json
from shared.errors import InvalidRequest, NotFound, ServiceError
from shared.services import jobs, webhooks

__all__ = ["Schedule", "ScheduleRequest", "create", "delete", "fire_due", "get", "list_schedules", "set_paused"]

log = logging.getLogger("agent.schedules")
MIN_INTERVAL = timedelta(seconds=60)


class ScheduleNotFound(NotFound):
    fix = "list the tenant's schedules with GET /api/schedules"


def next_after(cron: str, moment: datetime) -> datetime:
    result: datetime = croniter(cron, moment, second_at_beginning=True).get_next(datetime)
    return result


def latest_due(cron: str, now: datetime) -> datetime:
    """The latest occurrence at or before now."""
    result: datetime = croniter(cron, now + timedelta(microseconds=1), second_at_beginning=True).get_prev(datetime)
    return result


def check_cron(cron: str, min_interval: timedelta = MIN_INTERVAL) -> str:
    cron = " ".join(cron.split())
    if len(cron.split()) != 6 or not croniter.is_valid(cron, second_at_beginning=True):
        raise InvalidRequest(
            f"cron {cron!r} is not a six-field NCRONTAB expression (sec min hour day month day-of-week)",
            errors=[{"field": "cron", "message": "six fields: sec min hour day month day-of-week"}],
        )
    first = next_after(cron, utcnow())
    if next_after(cron, first) - first < min_interval:
        raise InvalidRequest(
            f"cron {cron!r} fires more often than every {min_interval.total_seconds():.0f} s",
            errors=[{"field": "cron", "message": "occurrences too close together"}],
        )
    return cron


class ScheduleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cron: Text = Field(max_length=200, description="Six-field NCRONTAB (UTC), e.g. '0 0 9 * * 1' (Mondays 09:00).")
    task: Text = Field(min_length=1, max_length=4000)
    policy: PolicyOverrides | None = None
    session_id: Text | None = Field(None, pattern=r"^[A-Za-z0-9_\-.]{1,100}$")
    callback_url: Text | None = Field(None, max_length=2000)

    @field_validator("task")
    @classmethod
    def _not_blank(cls, task: str) -> str:
        if not task.strip():
            raise ValueError("task must not be blank")
        return task.strip()


class Schedule(ScheduleRequest):
    model_config = ConfigDict(extra="ignore")

    id: str
    tenant: str
    paused: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    last_occurrence: datetime = Field(description="The latest occurrence submitted (or creation/resume time).")
    last_job_id: str | None = None
    last_error: str | None = None
    next_occurrence: datetime | None = Field(None, description="When it fires next (computed; none while paused).")


def _load(data: bytes) -> Schedule:
    return Schedule.model_validate_json(data)


def _dump(s: Schedule) -> bytes:
    return s.model_dump_json(exclude={"next_occurrence"}).encode()


def _shown(s: Schedule) -> Schedule:
    s.next_occurrence = None if s.paused else next_after(s.cron, max(s.last_occurrence, utcnow()))
    return s


def create(b: Backends, tenant: str, request: ScheduleRequest) -> Schedule:
    cron = check_cron(request.cron, timedelta(seconds=b.settings.schedule_min_interval_seconds))
    if request.callback_url:
        webhooks.check_callback(b.settings, tenant, request.callback_url)
    # Validate the policy now, not at the first occurrence: resolve() raises PolicyViolation.
    resolve(tenant_limits(b.settings.policy_defaults, b.settings.tenant_policies.get(tenant)), request.policy)
    now = utcnow()
    schedule = Schedule(
        **request.model_dump(exclude={"cron"}),
        cron=cron,
        id=f"sch-{secrets.token_hex(8)}",
        tenant=tenant,
        created_at=now,
        last_occurrence=now,
    )
    b.objects.put_if_absent(layout.schedule_key(tenant, schedule.id), _dump(schedule))
    return _shown(schedule)


def list_schedules(b: Backends, tenant: str | None = None) -> list[Schedule]:
    found = []
    for key in b.objects.list(layout.schedule_prefix(tenant)):
        obj = b.objects.get(key)
        if obj is not None:
            found.append(_shown(_load(obj.data)))
    return sorted(found, key=lambda s: s.created_at)


def get(b: Backends, tenant: str, schedule_id: str) -> Schedule:
    obj = b.objects.get(layout.schedule_key(tenant, schedule_id)) if _plausible(schedule_id) else None
    if obj is None:
        raise ScheduleNotFound(f"no schedule {schedule_id}")
    return _shown(_load(obj.data))


def _plausible(schedule_id: str) -> bool:
    return 0 < len(schedule_id) <= 100 and all(c.isalnum() or c in "-_" for c in schedule_id)


def delete(b: Backends, tenant: str, schedule_id: str) -> None:
    get(b, tenant, schedule_id)
    b.objects.delete(layout.schedule_key(tenant, schedule_id))


def set_paused(b: Backends, tenant: str, schedule_id: str, paused: bool) -> Schedule:
    """Pause, or resume from now on (occurrences missed while paused are not run)."""
    get(b, tenant, schedule_id)

    def change(s: Schedule | None) -> Schedule | None:
        if s is None or s.paused == paused:
            return None
        s.paused = paused
        if not paused:
            s.last_occurrence = max(s.last_occurrence, utcnow())
        return s

    updated = update_json(b.objects, layout.schedule_key(tenant, schedule_id), change, load=_load, dump=_dump)
    if updated is None:
        raise ScheduleNotFound(f"no schedule {schedule_id}")
    return _shown(updated)


def fire_due(b: Backends, now: datetime | None = None) -> list[str]:
    """Submit one job for each schedule whose latest occurrence is due; return the job ids submitted."""
    now = now or utcnow()
    submitted: list[str] = []
    for key in list(b.objects.list(layout.schedule_prefix())):
        obj = b.objects.get(key)
        if obj is None:
            continue
        schedule = _load(obj.data)
        if schedule.paused:
            continue
        due = latest_due(schedule.cron, now)
        if due <= schedule.last_occurrence:
            continue
        job_id = _fire(b, schedule, due)
        if job_id:
            submitted.append(job_id)
    return submitted


def _fire(b: Backends, schedule: Schedule, due: datetime) -> str | None:
    request = jobs.JobRequest(
        task=schedule.task, session_id=schedule.session_id, policy=schedule.policy, callback_url=schedule.callback_url
    )
    key = f"schedule:{schedule.id}:{due.isoformat()}"  # the occurrence is the idempotency key
    job_id: str | None = None
    error: str | None = None
    try:
        job, created = jobs.submit(b, schedule.tenant, request, key, schedule_id=schedule.id)
        job_id = job.id
        if created:
            log.info(
                "schedule %s submitted %s for %s",
                schedule.id,
                job.id,
                due.isoformat(),
                extra={"event": "schedule_fired", "tenant": schedule.tenant, "job_id": job.id},
            )
        else:
            log.info(
                "schedule %s: %s was submitted already (another instance fired too)",
                schedule.id,
                due.isoformat(),
                extra={"event": "schedule_already_fired", "tenant": schedule.tenant, "job_id": job.id},
            )
    except ServiceError as exc:  # e.g. the budget is spent: the occurrence is skipped with its reason
        error = f"{due.isoformat()}: {exc}"
        log.warning(
            "schedule %s skipped %s: %s", schedule.id, due.isoformat(), exc, extra={"event": "schedule_skipped"}
        )

    def advance(s: Schedule | None) -> Schedule | None:
        if s is None or s.last_occurrence >= due:
            return None
        s.last_occurrence, s.last_job_id, s.last_error = due, job_id or s.last_job_id, error
        return s

    update_json(b.objects, layout.schedule_key(schedule.tenant, schedule.id), advance, load=_load, dump=_dump)
    return job_id
