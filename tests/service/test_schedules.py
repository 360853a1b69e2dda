"""Schedules: NCRONTAB validation, one job per occurrence even when instances fire together, missed
occurrences run once, pause/resume/delete, tenant scope."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from shared.bootstrap import build_backends
from shared.engine.backends import Backends
from shared.services import schedules
from shared.settings import DEV_API_KEY
from tests.fixtures.concurrency import raised, run_together

HOURLY = "0 0 * * * *"
KEYS = {DEV_API_KEY: {"tenant": "dev", "role": "operator"}, "key-acme": {"tenant": "acme"}}


@pytest.fixture
def keys(app_env: dict[str, str]) -> None:
    app_env["API_KEYS"] = json.dumps(KEYS)


def create(api: TestClient, cron: str = HOURLY, **extra: object) -> dict:  # type: ignore[type-arg]
    r = api.post("/api/schedules", json={"cron": cron, "task": "Weekly digest of incidents", **extra})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def scheduled_jobs(b: Backends, schedule_id: str) -> list:  # type: ignore[type-arg]
    return [j for j in b.jobs.all() if j.schedule_id == schedule_id]


@pytest.mark.parametrize("cron", ["0 * * * *", "61 * * * * *", "every day", "* * * * * *", "*/10 * * * * *"])
def test_cron_must_be_six_field_ncrontab_and_not_too_frequent(keys: None, api: TestClient, cron: str) -> None:
    r = api.post("/api/schedules", json={"cron": cron, "task": "x"})
    assert r.status_code == 422, r.text


def test_missed_occurrences_run_once_and_instances_firing_together_make_one_job(
    keys: None, backends: Backends, api: TestClient
) -> None:
    s = create(api)
    assert s["next_occurrence"] is not None
    created = datetime.fromisoformat(s["created_at"])
    base = created.replace(minute=0, second=0, microsecond=0)
    assert schedules.fire_due(backends, created) == []  # nothing before its first occurrence
    # Down for three occurrences: the latest one runs, once.
    later = base + timedelta(hours=3, seconds=5)
    other = build_backends(backends.settings)  # a second instance over the same storage and queue
    try:
        results = run_together(4, lambda i: schedules.fire_due(backends if i % 2 else other, later))
    finally:
        other.close()
    assert not raised(results)
    jobs = scheduled_jobs(backends, s["id"])
    assert len(jobs) == 1 and jobs[0].idempotency_key == f"schedule:{s['id']}:{(base + timedelta(hours=3)).isoformat()}"
    assert backends.queue.counts().active == 1  # one first step, too
    assert schedules.fire_due(backends, later + timedelta(minutes=10)) == []
    assert len(schedules.fire_due(backends, base + timedelta(hours=4))) == 1
    shown = api.get(f"/api/schedules/{s['id']}").json()
    assert shown["last_job_id"] in {j.id for j in scheduled_jobs(backends, s["id"])}


def test_pause_resume_delete_and_tenant_scope(keys: None, backends: Backends, api: TestClient) -> None:
    s = create(api)
    with TestClient(api.app, headers={"X-API-Key": "key-acme"}) as acme:
        assert acme.get(f"/api/schedules/{s['id']}").status_code == 404
        assert acme.delete(f"/api/schedules/{s['id']}").status_code == 404
        assert acme.get("/api/schedules").json() == []
    paused = api.post(f"/api/schedules/{s['id']}/pause").json()
    assert paused["paused"] is True and paused["next_occurrence"] is None
    far = datetime.now(UTC) + timedelta(days=2)
    assert schedules.fire_due(backends, far) == []
    resumed = api.post(f"/api/schedules/{s['id']}/resume").json()
    assert resumed["paused"] is False
    assert schedules.fire_due(backends, datetime.now(UTC)) == []  # missed while paused: not run
    assert [x["id"] for x in api.get("/api/schedules").json()] == [s["id"]]
    assert api.delete(f"/api/schedules/{s['id']}").status_code == 204
    assert api.get(f"/api/schedules/{s['id']}").status_code == 404
    assert schedules.fire_due(backends, far + timedelta(days=1)) == []
