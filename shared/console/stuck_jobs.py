"""Stuck jobs: the detector's latest run on the Overview, and what it would find now on its own page.

The page runs the detector read-only (`find_and_repair(repair=False)`: nothing is re-sent or
failed), so opening it never changes a job; repairing is the `stuck_jobs` timer's work, or the
Maintenance page's confirmed "repair now" (a platform action, like `agentctl jobs stuck --repair`).
A tenant operator sees its own tenant's jobs only.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from shared.console import pages
from shared.console.access import BackendsDep
from shared.console.pages import SessionDep
from shared.engine.backends import Backends
from shared.maintenance import stuck

router = APIRouter()
RUNS_PREFIX = "ops/runs/stuck_jobs/"


def latest_run(b: Backends) -> dict[str, Any] | None:
    """The newest run record of the stuck_jobs timer (its occurrence and counts), if it ever ran."""
    keys = sorted(b.objects.list(RUNS_PREFIX))
    found = b.objects.get(keys[-1]) if keys else None
    if found is None:
        return None
    record: dict[str, Any] = json.loads(found.data)
    return record


@router.get("/stuck")
def stuck_page(request: Request, s: SessionDep, b: BackendsDep) -> Response:
    scope = pages.tenant_scope(pages.caller_of(s))
    report = stuck.find_and_repair(b, repair=False)
    shown = [j for j in report.jobs if scope is None or j.tenant == scope]
    return pages.render(request, "stuck.html", s, report=report, jobs=shown, latest=latest_run(b), limit_s=_limit(b))


def _limit(b: Backends) -> float:
    return float(b.settings.stuck_step_seconds + b.settings.queue_lock_seconds)
