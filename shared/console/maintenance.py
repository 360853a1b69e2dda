"""Maintenance: backups (list, run now, restore), weekly checks, retention, timer schedules and runs,
job schedules and webhook deliveries (their actions are in automation.py).

Every action is confirmed on its own page first; the restore confirmation names what will be
replaced (the live index's chunk count against the backup's). Each reports what it did.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import Response

from shared.console import automation, pages, session
from shared.console.access import BackendsDep
from shared.console.overview import latest_weekly_report
from shared.console.pages import SessionDep
from shared.engine.backends import Backends
from shared.errors import NotFound
from shared.maintenance import TASKS, backup, checks, retention, stuck
from shared.settings import resolve_binding_expression

router = APIRouter()
ACTIONS = ("backup", "restore", "checks", "retention", "stuck")
RUNS_SHOWN = 12


def recent_runs(b: Backends) -> list[dict[str, Any]]:
    """The newest timer run records (ops/runs/{task}/{occurrence}.json), newest first."""
    keys = sorted(b.objects.list("ops/runs/"), key=lambda k: k.rsplit("/", 1)[1], reverse=True)[:RUNS_SHOWN]
    runs = []
    for key in keys:
        found = b.objects.get(key)
        if found is not None:
            runs.append(json.loads(found.data))
    return runs


@router.get("/maintenance")
def maintenance_page(request: Request, s: SessionDep, b: BackendsDep, done: str | None = None) -> Response:
    caller = pages.caller_of(s)
    schedules = {name: resolve_binding_expression(f"%{task.setting}%", b.settings) for name, task in TASKS.items()}
    return pages.render(
        request,
        "maintenance.html",
        s,
        backups=backup.list_backups(b),
        weekly=latest_weekly_report(b, pages.tenant_scope(caller)),
        schedules=schedules,
        runs=recent_runs(b),
        retention_days=b.settings.checkpoint_retention_days,
        job_schedules=automation.visible_schedules(b, caller),
        deliveries=automation.recent_deliveries(b, caller),
        done=done if done in automation.SCHEDULE_ACTIONS + ("redeliver",) else None,
    )


@router.get("/maintenance/confirm")
def confirm(
    request: Request,
    s: SessionDep,
    b: BackendsDep,
    action: Annotated[str, Query(max_length=20)],
    backup_id: Annotated[str, Query(max_length=40)] = "",
) -> Response:
    if action not in ACTIONS:
        raise NotFound(f"no action {action}")
    pages.require_platform(request, pages.caller_of(s))
    manifest = None
    if action == "restore":
        manifest = next((m for m in backup.list_backups(b) if m.id == backup_id), None)
        if manifest is None:
            raise backup.BackupNotFound(f"no backup {backup_id}")
    return pages.render(
        request,
        "maintenance_confirm.html",
        s,
        action=action,
        manifest=manifest,
        live_chunks=b.index.count(),
        retention_days=b.settings.checkpoint_retention_days,
    )


@router.post("/maintenance/{action}")
def act(
    request: Request,
    action: str,
    s: SessionDep,
    b: BackendsDep,
    csrf: Annotated[str, Form()] = "",
    backup_id: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    session.check_csrf(s, csrf)
    if action not in ACTIONS:
        raise NotFound(f"no action {action}")
    pages.require_platform(request, pages.caller_of(s))
    result: Any
    if action == "backup":
        result = backup.run_backup(b)
    elif action == "restore":
        result = backup.restore(b, backup_id)
    elif action == "checks":
        result = checks.run_weekly_checks(b)
    elif action == "stuck":
        result = stuck.find_and_repair(b)
    else:
        result = retention.apply_retention(b)
    counts = result.counts() if hasattr(result, "counts") else {}
    return pages.render(request, "maintenance_done.html", s, action=action, result=result, counts=counts)
