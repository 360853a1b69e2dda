"""/api/schedules: a tenant's recurring research jobs (six-field NCRONTAB, UTC)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from shared.api.deps import BackendsDep
from shared.api.security import CallerDep
from shared.services import schedules
from shared.services.schedules import Schedule, ScheduleRequest

router = APIRouter(prefix="/api/schedules", tags=["schedules"])


@router.post("", status_code=201, response_model=Schedule, summary="Create a schedule: one job per occurrence")
def create_schedule(body: ScheduleRequest, caller: CallerDep, b: BackendsDep, response: Response) -> Schedule:
    schedule = schedules.create(b, caller.tenant, body)
    response.headers["Location"] = f"/api/schedules/{schedule.id}"
    return schedule


@router.get("", response_model=list[Schedule], summary="The caller's schedules")
def list_schedules(caller: CallerDep, b: BackendsDep) -> list[Schedule]:
    return schedules.list_schedules(b, caller.tenant)


@router.get("/{schedule_id}", response_model=Schedule, summary="One schedule, with its next occurrence")
def get_schedule(schedule_id: str, caller: CallerDep, b: BackendsDep) -> Schedule:
    return schedules.get(b, caller.tenant, schedule_id)


@router.delete("/{schedule_id}", status_code=204, summary="Delete a schedule (its jobs stay)")
def delete_schedule(schedule_id: str, caller: CallerDep, b: BackendsDep) -> Response:
    schedules.delete(b, caller.tenant, schedule_id)
    return Response(status_code=204)


@router.post("/{schedule_id}/pause", response_model=Schedule, summary="Pause: no jobs until resumed")
def pause_schedule(schedule_id: str, caller: CallerDep, b: BackendsDep) -> Schedule:
    return schedules.set_paused(b, caller.tenant, schedule_id, True)


@router.post(
    "/{schedule_id}/resume",
    response_model=Schedule,
    summary="Resume from now (occurrences missed meanwhile do not run)",
)
def resume_schedule(schedule_id: str, caller: CallerDep, b: BackendsDep) -> Schedule:
    return schedules.set_paused(b, caller.tenant, schedule_id, False)
