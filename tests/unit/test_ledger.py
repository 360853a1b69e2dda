"""The token ledger: one record per job plus an incrementally kept month total, monotonic by step."""

from __future__ import annotations

import json
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
