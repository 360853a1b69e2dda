"""A schedule fired by two embedded runtimes at once (same storage and queue) makes one job per occurrence."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.fixtures.app import ingest_over_http

pytestmark = pytest.mark.slow
QUIET = {
    n: "0 0 0 1 1 *" for n in ("BACKUP_SCHEDULE", "DLQ_SWEEP_SCHEDULE", "WEEKLY_CHECKS_SCHEDULE", "RETENTION_SCHEDULE")
}


def test_two_runtimes_firing_together_make_one_job_per_occurrence(runtime, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = {**QUIET, "SCHEDULES_SCHEDULE": "* * * * * *", "SCHEDULE_MIN_INTERVAL_SECONDS": "1"}
    data_dir = tmp_path / "shared"
    first, second = runtime(env, data_dir), runtime(env, data_dir)
    with first.client() as client:
        ingest_over_http(client)
        r = client.post("/api/schedules", json={"cron": "*/2 * * * * *", "task": "Daily incident summary"})
        assert r.status_code == 201, r.text
        schedule_id = r.json()["id"]
        time.sleep(7)  # three or four occurrences, each seen by both runtimes' timers
        client.post(f"/api/schedules/{schedule_id}/pause")
        jobs = [j for j in client.get("/api/jobs", params={"limit": 100}).json()["jobs"] if j["schedule_id"]]
    with second.client() as client:
        assert client.get(f"/api/schedules/{schedule_id}").json()["paused"] is True
    per_occurrence = Counter(j["idempotency_key"] for j in jobs)
    assert len(per_occurrence) >= 3, per_occurrence
    assert set(per_occurrence.values()) == {1}, per_occurrence
    log = (data_dir / "logs" / "runtime.jsonl").read_text()
    assert log.count('"schedule_already_fired"') >= 1  # the other runtime fired the same occurrence too
