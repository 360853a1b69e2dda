"""Checkpoints store a state's change from the step before, with periodic full snapshots: reads stay exact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.adapters.local.blobs import LocalObjectStore
from shared.contracts import Checkpoint, Outcome
from shared.engine.layout import checkpoint_key
from shared.engine.repositories import CheckpointStore


def state_at(step: int) -> dict[str, Any]:
    """A growing agent-like state: appended messages, added sources, a counter that changes."""
    return {
        "task": "t",
        "messages": [{"role": "tool", "content": f"output {n} " * 20} for n in range(step)],
        "sources": {f"doc:{n}": {"content": f"chunk {n}"} for n in range(step // 2)},
        "nudges": step % 3,
        "report": {"text": "done"} if step == 40 else None,
    }


def commit_job(store: CheckpointStore, steps: int) -> list[Checkpoint]:
    committed = []
    for n in range(1, steps + 1):
        outcome = Outcome(status="succeeded") if n == steps else None
        cp = Checkpoint(job_id="job-1", step=n, kind="model", summary=f"s{n}", state=state_at(n), outcome=outcome)
        assert store.commit(cp)
        committed.append(cp)
    return committed


def test_every_step_reads_back_exactly_after_a_restart(tmp_path: Path) -> None:
    objects = LocalObjectStore(tmp_path / "blobs", synchronous="NORMAL")
    committed = commit_job(CheckpointStore(objects, snapshot_every=10), 40)
    fresh = CheckpointStore(objects, snapshot_every=10)  # a new process: nothing in memory
    for cp in reversed(committed):  # newest first: each read rebuilds its chain from storage
        assert fresh.get("job-1", cp.step) == cp


def test_storage_grows_linearly_and_the_last_step_is_a_full_snapshot(tmp_path: Path) -> None:
    objects = LocalObjectStore(tmp_path / "blobs", synchronous="NORMAL")
    store = CheckpointStore(objects, snapshot_every=10)
    commit_job(store, 40)
    stored = {n: objects.get(checkpoint_key("job-1", n)).data for n in range(1, 41)}  # type: ignore[union-attr]
    full = len(json.dumps(state_at(39)))
    assert len(stored[39]) < full / 10  # a delta: this step's change only
    assert [n for n in stored if store.is_snapshot("job-1", n)] == [1, 10, 20, 30, 40]
    assert store.prunable("job-1") == list(range(1, 40))  # retention keeps the last snapshot


def test_retention_keeps_the_chain_of_a_job_ended_between_snapshots(tmp_path: Path) -> None:
    objects = LocalObjectStore(tmp_path / "blobs", synchronous="NORMAL")
    store = CheckpointStore(objects, snapshot_every=10)
    for n in range(1, 15):  # ended out of band at step 14: its last checkpoint is a delta
        store.commit(Checkpoint(job_id="job-1", step=n, kind="model", summary="", state=state_at(n)))
    assert store.prunable("job-1") == list(range(1, 10))
    for n in store.prunable("job-1"):
        store.delete("job-1", n)
    assert CheckpointStore(objects).get("job-1", 14).state == state_at(14)  # type: ignore[union-attr]
