"""The token ledger: one record per job plus an incrementally kept month total, monotonic by step."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from shared.adapters.local.blobs import LocalObjectStore
from shared.contracts import Usage
from shared.engine import layout
from shared.engine.ledger import UsageLedger

MONTH = "2026-12"


@pytest.fixture
def objects(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "blobs", synchronous="NORMAL")


def u(tokens: int) -> Usage:
    return Usage(prompt_tokens=tokens, completion_tokens=1)


def test_total_follows_each_jobs_latest_step(objects: LocalObjectStore) -> None:
    ledger = UsageLedger(objects)
    assert ledger.record("acme", MONTH, "a", u(9), step=1, final=False) == (0, 10)
    assert ledger.record("acme", MONTH, "b", u(4), step=2, final=False) == (10, 15)
    assert ledger.record("acme", MONTH, "a", u(19), step=3, final=True) == (15, 25)
    assert ledger.total("acme", MONTH) == Usage(prompt_tokens=23, completion_tokens=2)
    assert ledger.by_job("acme", MONTH) == {"a": u(19), "b": u(4)}
    assert ledger.tenants(MONTH) == {"acme": Usage(prompt_tokens=23, completion_tokens=2)}


def test_an_older_or_repeated_step_changes_nothing(objects: LocalObjectStore) -> None:
    ledger = UsageLedger(objects)
    ledger.record("acme", MONTH, "a", u(9), step=3, final=False)
    assert ledger.record("acme", MONTH, "a", u(9), step=3, final=False) == (10, 10)
    assert ledger.record("acme", MONTH, "a", u(4), step=2, final=False) == (10, 10)
    assert ledger.total("acme", MONTH).total_tokens == 10


def test_a_replayed_final_step_after_a_crash_between_the_writes_counts_once(objects: LocalObjectStore) -> None:
    ledger = UsageLedger(objects)
    ledger.record("acme", MONTH, "a", u(9), step=2, final=True)
    objects.delete(layout.ledger_job_key(MONTH, "acme", "a"))  # the crash: the job's own record never written
    assert ledger.record("acme", MONTH, "a", u(9), step=2, final=True) == (10, 10)
    assert objects.get(layout.ledger_job_key(MONTH, "acme", "a")) is not None  # the replay wrote it
    assert ledger.total("acme", MONTH).total_tokens == 10


def test_a_forgotten_finished_job_takes_its_base_from_its_own_record(objects: LocalObjectStore) -> None:
    ledger = UsageLedger(objects, recent_seconds=0.0)  # forget finished jobs at once
    ledger.record("acme", MONTH, "a", u(9), step=2, final=True)
    ledger.record("acme", MONTH, "b", u(0), step=1, final=True)  # a later write prunes "a" from the total
    recent = json.loads(objects.get(layout.ledger_key(MONTH, "acme")).data)["recent"]  # type: ignore[union-attr]
    assert "a" not in recent
    assert ledger.record("acme", MONTH, "a", u(9), step=2, final=True) == (11, 11)  # late replay: nothing
    assert ledger.record("acme", MONTH, "a", u(14), step=3, final=True) == (11, 16)  # later step: the delta


def test_the_total_record_does_not_grow_with_the_months_finished_jobs(objects: LocalObjectStore) -> None:
    ledger = UsageLedger(objects, recent_seconds=0.0)
    for n in range(50):
        ledger.record("acme", MONTH, f"job-{n}", u(1), step=1, final=True)
    stored = objects.get(layout.ledger_key(MONTH, "acme"))
    assert stored is not None and len(stored.data) < 400
    assert ledger.total("acme", MONTH).total_tokens == 100
    assert len(ledger.by_job("acme", MONTH)) == 50


def test_the_earlier_one_record_per_month_format_is_read_and_extended(objects: LocalObjectStore) -> None:
    old = {"tenant": "acme", "month": MONTH, "jobs": {"a": {**u(9).model_dump(), "step": 2}}}
    objects.put(layout.ledger_key(MONTH, "acme"), json.dumps(old).encode())
    ledger = UsageLedger(objects)
    assert ledger.total("acme", MONTH).total_tokens == 10
    assert ledger.record("acme", MONTH, "a", u(9), step=2) == (10, 10)  # already counted in the old record
    assert ledger.record("acme", MONTH, "a", u(19), step=3) == (10, 20)
    assert ledger.record("acme", MONTH, "b", u(4), step=1) == (20, 25)
    assert ledger.by_job("acme", MONTH) == {"a": u(19), "b": u(4)}


def test_a_running_jobs_usage_change_is_one_write_and_lives_in_the_total(objects: LocalObjectStore) -> None:
    ledger = UsageLedger(objects)
    writes: list[str] = []
    put, put_if_absent = objects.put, objects.put_if_absent
    objects.put = lambda key, *a, **kw: writes.append(key) or put(key, *a, **kw)  # type: ignore[method-assign]
    objects.put_if_absent = lambda key, *a: writes.append(key) or put_if_absent(key, *a)  # type: ignore[method-assign]
    ledger.record("acme", MONTH, "a", u(9), step=1, final=False)
    ledger.record("acme", MONTH, "a", u(19), step=2, final=False)
    assert writes == [layout.ledger_key(MONTH, "acme")] * 2  # the total only, once per change
    assert ledger.by_job("acme", MONTH) == {"a": u(19)}  # the running job is read from the total
    ledger.record("acme", MONTH, "a", u(29), step=3, final=True)
    assert writes[2:] == [layout.ledger_key(MONTH, "acme"), layout.ledger_job_key(MONTH, "acme", "a")]
    assert ledger.total("acme", MONTH).total_tokens == 30


def test_an_unfinished_job_is_never_forgotten_by_the_total(
    objects: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its entry is its only record: were it dropped, the job's next step would count its usage again."""
    ledger = UsageLedger(objects, recent_seconds=0.0)
    ledger.record("acme", MONTH, "a", u(9), step=1, final=False)
    later = time.time() + 30 * 86400.0  # a month idle (a job parked for approval, say)
    monkeypatch.setattr("shared.engine.ledger.time.time", lambda: later)
    ledger.record("acme", MONTH, "b", u(0), step=1, final=True)  # a later write prunes what it may
    assert ledger.record("acme", MONTH, "a", u(14), step=2, final=False) == (11, 16)  # the delta, not 15 again


def test_the_total_record_holds_the_jobs_in_flight_not_the_hours_finished_ones(objects: LocalObjectStore) -> None:
    ledger = UsageLedger(objects)  # finished jobs may be remembered for an hour, but need not be
    for n in range(20):
        ledger.record("acme", MONTH, f"done-{n}", u(1), step=2, final=True)
    ledger.record("acme", MONTH, "running", u(1), step=1, final=False)
    recent = json.loads(objects.get(layout.ledger_key(MONTH, "acme")).data)["recent"]  # type: ignore[union-attr]
    assert set(recent) == {"running"}  # every finished job's own record was written, so it is the base
    assert ledger.record("acme", MONTH, "done-3", u(1), step=2, final=True) == (42, 42)  # a replay: nothing
    assert ledger.total("acme", MONTH).total_tokens == 42


def test_a_finished_job_whose_own_record_never_came_stays_in_the_total(objects: LocalObjectStore) -> None:
    ledger = UsageLedger(objects)
    ledger.record("acme", MONTH, "a", u(9), step=2, final=True)
    objects.delete(layout.ledger_job_key(MONTH, "acme", "a"))  # the crash between the two writes
    ledger.record("acme", MONTH, "b", u(1), step=1, final=False)
    assert ledger.record("acme", MONTH, "a", u(9), step=2, final=True) == (12, 12)  # the replay counts nothing
