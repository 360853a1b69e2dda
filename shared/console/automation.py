"""Job schedules (pause, resume, delete) and webhook deliveries (redeliver) on the Maintenance page.

Both are tenant data: a tenant operator sees and acts on its own tenant's only, an `admin` on every
tenant's. Every action is confirmed on its own page first (naming the schedule or delivery) and
carries the session's CSRF token; the services do the work exactly as the API's routes do.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import Response

from shared.console import pages, session
from shared.console.access import BackendsDep, Operator
from shared.console.pages import SessionDep
from shared.engine.backends import Backends
from shared.errors import NotFound
from shared.services import schedules, webhooks

router = APIRouter()
SCHEDULE_ACTIONS = ("pause", "resume", "delete")
DELIVERIES_SHOWN = 20


def visible_schedules(b: Backends, caller: Operator) -> list[schedules.Schedule]:
    return schedules.list_schedules(b, pages.tenant_scope(caller))


def recent_deliveries(b: Backends, caller: Operator) -> list[webhooks.Delivery]:
    """The newest deliveries the caller may see, newest first."""
    return list(reversed(webhooks.list_deliveries(b, tenant=pages.tenant_scope(caller))))[:DELIVERIES_SHOWN]


def _schedule(b: Backends, caller: Operator, tenant: str, schedule_id: str) -> schedules.Schedule:
    scope = pages.tenant_scope(caller)
    if scope is not None and tenant != scope:  # another tenant's schedule does not exist for this operator
        raise schedules.ScheduleNotFound(f"no schedule {schedule_id}")
    return schedules.get(b, tenant, schedule_id)


def _delivery(b: Backends, caller: Operator, delivery_id: str) -> webhooks.Delivery:
    found = webhooks.get_delivery(b, delivery_id)
    scope = pages.tenant_scope(caller)
    if scope is not None and found.tenant != scope:
        raise webhooks.DeliveryNotFound(f"no webhook delivery {delivery_id}")
    return found


@router.get("/maintenance/schedules/confirm")
def confirm_schedule(
    request: Request,
    s: SessionDep,
    b: BackendsDep,
    action: Annotated[str, Query(max_length=10)],
    tenant: Annotated[str, Query(max_length=100)],
    schedule_id: Annotated[str, Query(alias="id", max_length=100)],
) -> Response:
    if action not in SCHEDULE_ACTIONS:
        raise NotFound(f"no action {action}")
    found = _schedule(b, pages.caller_of(s), tenant, schedule_id)
    return pages.render(request, "automation_confirm.html", s, action=action, schedule=found, delivery=None)


@router.post("/maintenance/schedules/{action}")
def act_on_schedule(
    request: Request,
    action: str,
    s: SessionDep,
    b: BackendsDep,
    csrf: Annotated[str, Form()] = "",
    tenant: Annotated[str, Form(max_length=100)] = "",
    schedule_id: Annotated[str, Form(alias="id", max_length=100)] = "",
) -> Response:
    session.check_csrf(s, csrf)
    if action not in SCHEDULE_ACTIONS:
        raise NotFound(f"no action {action}")
    found = _schedule(b, pages.caller_of(s), tenant, schedule_id)
    if action == "delete":
        schedules.delete(b, found.tenant, found.id)
    else:
        schedules.set_paused(b, found.tenant, found.id, action == "pause")
    return pages.see_other(f"/console/maintenance?done={action}#h-job-schedules")


@router.get("/maintenance/webhooks/confirm")
def confirm_redelivery(
    request: Request, s: SessionDep, b: BackendsDep, delivery_id: Annotated[str, Query(alias="id", max_length=200)]
) -> Response:
    found = _delivery(b, pages.caller_of(s), delivery_id)
    return pages.render(request, "automation_confirm.html", s, action="redeliver", schedule=None, delivery=found)


@router.post("/maintenance/webhooks/redeliver")
def redeliver(
    s: SessionDep,
    b: BackendsDep,
    csrf: Annotated[str, Form()] = "",
    delivery_id: Annotated[str, Form(alias="id", max_length=200)] = "",
) -> Response:
    session.check_csrf(s, csrf)
    found = _delivery(b, pages.caller_of(s), delivery_id)
    webhooks.redeliver(b, found.id)
    return pages.see_other("/console/maintenance?done=redeliver#h-webhooks")
