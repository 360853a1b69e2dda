"""The timer triggers Azure will index: each reads its NCRONTAB schedule from an app setting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.maintenance import TASKS, occurrence
from shared.runtime.functions import app_functions
from shared.runtime.timers import next_occurrence
from shared.settings import Settings, resolve_binding_expression

EXPECTED = {
    "backup": ("%BACKUP_SCHEDULE%", timedelta(days=1)),
    "dlq_sweep": ("%DLQ_SWEEP_SCHEDULE%", timedelta(minutes=15)),
    "weekly_checks": ("%WEEKLY_CHECKS_SCHEDULE%", timedelta(days=7)),
    "retention": ("%RETENTION_SCHEDULE%", timedelta(days=1)),
    "schedules": ("%SCHEDULES_SCHEDULE%", timedelta(minutes=1)),
    "stuck_jobs": ("%STUCK_JOBS_SCHEDULE%", timedelta(minutes=5)),
}
MAINTENANCE = {name for name in EXPECTED if name != "schedules"}  # the tenants' schedules are not maintenance


def _timers() -> dict[str, dict]:
    # app_functions() calls function_app.app.get_functions() once per process (it may only run once).
    _, indexed = app_functions()
    return {
        f.get_function_name(): f.get_trigger().get_dict_repr()
        for f in indexed
        if f.get_trigger().type == "timerTrigger"
    }


def test_every_timer_reads_its_schedule_from_an_app_setting() -> None:
    timers = _timers()
    assert {name: t["schedule"] for name, t in timers.items()} == {n: s for n, (s, _) in EXPECTED.items()}
    for binding in timers.values():
        assert binding["name"] == "timer" and str(binding["direction"]).lower().endswith("in")
        assert not binding.get("runOnStartup"), "a deploy or scale-out must not start a backup"


def test_each_timer_runs_the_maintenance_task_of_its_setting() -> None:
    assert set(TASKS) == MAINTENANCE
    for name, task in TASKS.items():
        assert f"%{task.setting}%" == EXPECTED[name][0]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_default_schedules_are_six_field_ncrontab_with_the_runbook_cadence(name: str) -> None:
    schedule = resolve_binding_expression(EXPECTED[name][0], Settings())
    start = datetime(2025, 3, 3, 0, 0, 1, tzinfo=UTC)
    first = next_occurrence(schedule, start)
    assert next_occurrence(schedule, first) - first == EXPECTED[name][1]
    # A firing at (or a moment before) an occurrence belongs to that occurrence: one run record per occurrence.
    assert occurrence(schedule, first) == first
    assert occurrence(schedule, first - timedelta(seconds=2)) == first
    assert occurrence(schedule, first + timedelta(seconds=30)) == first
