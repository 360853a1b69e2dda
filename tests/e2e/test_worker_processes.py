"""FUNCTIONS_WORKER_PROCESS_COUNT on the embedded runtime: worker processes share the queue, die, come back.

The runtime in a subprocess with two processes: its own consumers and one `--steps-only` worker.
Jobs are served by both (the worker's log lines carry "worker": 2). maxConcurrentCalls is shared
by the two, and health counts the calls of both. A worker SIGKILLed in the middle of jobs is started
again, and every job finishes with nothing lost or counted twice; a worker whose runtime is
killed exits by itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shared.adapters.local.blobs import LocalObjectStore
from shared.contracts import Usage
from shared.engine.ledger import UsageLedger, month_of
from shared.engine.repositories import CheckpointStore, JobStore
from tests.e2e.test_e2e_runtime import ingest
from tests.fixtures.app import ROOT, RuntimeProcess, wait_for

pytestmark = pytest.mark.slow

CALLS = 8  # host.json maxConcurrentCalls: per instance, shared by its processes (4 and 4)


def worker_pids(parent: int) -> list[int]:
    """The runtime's `--steps-only` children that are running (not zombies)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == parent and state != "Z" and b"--steps-only" in cmdline:
            found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def agent_workers(rt: RuntimeProcess) -> dict[str, object]:
    with rt.client() as c:
        return c.get("/api/health").json()["workers"]["agent_step"]  # type: ignore[no-any-return]


def submit(rt: RuntimeProcess, n: int, tag: str) -> list[str]:
    with rt.client() as c:
        return [
            c.post("/api/jobs", json={"task": f"How is a backup restored? ({tag} {i})"}).json()["id"] for i in range(n)
        ]


def all_succeed(rt: RuntimeProcess, ids: list[str]) -> None:
    with rt.client() as c:

        def all_done() -> bool:
            return all(c.get(f"/api/jobs/{i}").json()["status"] in ("succeeded", "failed", "cancelled") for i in ids)

        wait_for(all_done, timeout=120, interval=0.2)
        statuses = {c.get(f"/api/jobs/{i}").json()["status"] for i in ids}
    assert statuses == {"succeeded"}, statuses


def check_accounts(data_dir: Path, ids: list[str]) -> None:
    """Nothing lost, nothing counted twice: contiguous checkpoints, each projected once, usage and ledger equal."""
    objects = LocalObjectStore(data_dir / "blobs")
    jobs, checkpoints, ledger = JobStore(objects), CheckpointStore(objects), UsageLedger(objects)
    entries = ledger.by_job("dev", month_of())
    for job_id in ids:
        steps = checkpoints.steps(job_id)
        assert steps == list(range(1, len(steps) + 1)), f"{job_id}: checkpoints {steps}"
        job = jobs.get(job_id)
        assert job is not None and [p.step for p in job.progress] == steps, f"{job_id}: progress vs {steps}"
        summed = Usage()
        for cp in checkpoints.all(job_id):
            summed = summed + cp.usage
        assert job.usage == summed, f"{job_id}: usage {job.usage} != its checkpoints' {summed}"
        assert entries.get(job_id) == summed, f"{job_id}: ledger {entries.get(job_id)} != {summed}"
    objects.close()


def steps_by_worker(data_dir: Path, ids: list[str]) -> dict[int, int]:
    """Committed steps of these jobs per process (1: the runtime itself), from the runtime's log."""
    counts: dict[int, int] = {}
    wanted = set(ids)
    for line in (data_dir / "logs" / "runtime.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("job_id") in wanted and " used " in record.get("message", ""):
            worker = int(record.get("worker", 1))
            counts[worker] = counts.get(worker, 0) + 1
    return counts


def test_two_processes_share_the_steps_and_a_worker_killed_mid_job_loses_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {"FUNCTIONS_WORKER_PROCESS_COUNT": "2", "OFFLINE_MODEL_LATENCY_MS": "60", "QUEUE_LOCK_SECONDS": "2"}
    rt = RuntimeProcess(data_dir, env)
    rt.start()
    assert rt.proc is not None
    try:
        (worker,) = wait_for(lambda: worker_pids(rt.proc.pid), timeout=30)  # type: ignore[union-attr]
        wait_for(lambda: agent_workers(rt)["alive"] == CALLS, timeout=30)
        assert agent_workers(rt) == {"status": "up", "configured": CALLS, "alive": CALLS, "lock_renewer": "up"}
        with rt.client() as c:
            ingest(c)
        ids = submit(rt, 60, "both")
        # Killed while it holds steps of running jobs: their locks expire and the runtime finishes them.
        wait_for(lambda: steps_by_worker(data_dir, ids).get(2, 0) >= 20, timeout=60)
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: agent_workers(rt)["alive"] == CALLS // 2, timeout=10)  # health tells at once
        (again,) = wait_for(lambda: [p for p in worker_pids(rt.proc.pid) if p != worker], timeout=30)  # type: ignore[union-attr]
        wait_for(lambda: agent_workers(rt)["alive"] == CALLS, timeout=30)
        all_succeed(rt, ids)
        served = steps_by_worker(data_dir, ids)
        assert served.get(1, 0) > 0 and served.get(2, 0) > 0, f"steps per process: {served}"
        after = submit(rt, 8, "after")
        all_succeed(rt, after)
        check_accounts(data_dir, ids + after)
        assert "worker process 2" in (data_dir / "logs" / "runtime.jsonl").read_text(encoding="utf-8")
    finally:
        rt.kill9()
    wait_for(lambda: not running(again), timeout=15)  # orphaned: it exits by itself


def test_a_worker_process_count_out_of_range_is_refused_with_the_reason(tmp_path: Path) -> None:
    env = {**os.environ, "DATA_DIR": str(tmp_path), "FUNCTIONS_WORKER_PROCESS_COUNT": "11"}
    done = subprocess.run(
        [sys.executable, "-m", "shared.runtime", "--port", "0"], cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 1
    assert b"FUNCTIONS_WORKER_PROCESS_COUNT must be a whole number from 1 to 10, not '11'" in done.stderr


def test_a_worker_process_whose_runtime_is_already_gone_exits_by_itself(tmp_path: Path) -> None:
    # The runtime died while this worker was still starting: it must not adopt init as its parent.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    env = {**os.environ, "DATA_DIR": str(tmp_path)}
    argv = [sys.executable, "-m", "shared.runtime", "--steps-only", "--worker", "2", "--parent", str(gone.pid)]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
