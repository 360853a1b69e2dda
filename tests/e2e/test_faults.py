"""The fault suite: the embedded runtime in a subprocess, under kills, duplicates, outages and corruption.

Replays issue 11's experiments against `python -m shared.runtime`, bounded (a few minutes on
2 cores), and after each phase checks the invariants:
- every job is terminal, or reported with a reason by `agentctl jobs stuck` (only an unreadable record);
- checkpoints are contiguous 1..N, each projected once, and the job's usage is their sum (no double commit);
- every succeeded job has its report;
- the ledger's entry of every job equals its usage, and the month total equals their sum;
- the worker pool is at its configured size and health says so, truthfully, within a second.

Phases: random SIGKILLs while 200 jobs run, with duplicates of committed and in-flight steps,
stray future steps, malformed and unknown-job messages; duplicates of finished jobs' old steps;
the queue database held locked for 20 s; the blob database held locked for 20 s; a full disk
(a tmpfs filled to the last byte, or RLIMIT_FSIZE on the runtime where mounting is not allowed);
a corrupt checkpoint and a corrupt job record. The figures (and recovery times) are printed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import resource
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.adapters.local.blobs import LocalObjectStore
from shared.adapters.local.queue import LocalQueue
from shared.contracts import StepMessage, Usage
from shared.engine import layout
from shared.engine.ledger import UsageLedger, month_of
from shared.engine.repositories import CheckpointStore, JobStore
from shared.errors import CorruptRecord, DependencyUnavailable
from shared.settings import DEV_API_KEY
from tests.e2e.test_e2e_runtime import ingest
from tests.fixtures.app import RuntimeProcess, wait_for
from tests.fixtures.cli import run_cli
from tests.fixtures.faults import corrupt, lock_for

pytestmark = [pytest.mark.slow, pytest.mark.faults]

WORKERS = 8  # host.json maxConcurrentCalls
ENV = {
    "OFFLINE_MODEL_LATENCY_MS": "120",  # jobs take long enough to be killed mid-way
    "QUEUE_LOCK_SECONDS": "2",
    "DLQ_SWEEP_SCHEDULE": "*/5 * * * * *",
    "STUCK_JOBS_SCHEDULE": "*/3 * * * * *",
    "STUCK_STEP_SECONDS": "4",
    "STEP_RETRY_BASE_SECONDS": "1",
}
OUTAGE_SECONDS = 20.0
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Figures:
    jobs: int = 0
    kills: int = 0
    duplicates: int = 0
    strays: int = 0
    malformed: int = 0
    outages: list[str] = field(default_factory=list)
    invariant_checks: int = 0
    recovery_after_kill: list[float] = field(default_factory=list)
    recovery_after_outage: dict[str, float] = field(default_factory=dict)
    health_ms_during_outage: dict[str, float] = field(default_factory=dict)
    submit_ms_during_outage: dict[str, float] = field(default_factory=dict)


class World:
    """The runtime under test plus direct access to its data directory (multi-process safe)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.rt = RuntimeProcess(data_dir, ENV)
        self.objects = LocalObjectStore(data_dir / "blobs")
        self.jobs = JobStore(self.objects)
        self.checkpoints = CheckpointStore(self.objects)
        self.ledger = UsageLedger(self.objects)
        self.queue = LocalQueue(data_dir / "queue.sqlite3", "agent-jobs", lock_seconds=2)
        self.ids: list[str] = []
        self.unreadable: set[str] = set()
        self.corrupt_checkpoints: set[str] = set()
        self.figures = Figures()

    def client(self) -> httpx.Client:
        return self.rt.client()

    def submit(self, n: int, tag: str) -> list[str]:
        with self.client() as c:
            ids = [
                c.post("/api/jobs", json={"task": f"How is a backup restored? ({tag} {i})"}).json()["id"]
                for i in range(n)
            ]
        self.ids += ids
        self.figures.jobs += n
        return ids

    def progress(self) -> dict[str, tuple[str, int]]:
        """job id -> (status, last committed step), read from storage."""
        seen: dict[str, tuple[str, int]] = {}
        for job_id in self.ids:
            steps = self.checkpoints.steps(job_id)
            try:
                job = self.jobs.get(job_id)
            except CorruptRecord:
                seen[job_id] = ("unreadable", max(steps, default=0))
                continue
            assert job is not None, f"job {job_id} vanished"
            seen[job_id] = (job.status, max(steps, default=0))
        return seen

    def unfinished(self) -> dict[str, int]:
        return {i: step for i, (status, step) in self.progress().items() if status not in (*TERMINAL, "unreadable")}

    def wait_until_moved(self, before: dict[str, int], timeout: float = 90.0) -> float:
        """Seconds until every job of `before` committed a step past the one recorded (or ended)."""
        started = time.monotonic()

        def moved() -> bool:
            now = self.progress()
            return all(now[i][0] in (*TERMINAL, "unreadable") or now[i][1] > step for i, step in before.items())

        try:
            wait_for(moved, timeout=timeout, interval=0.05)
        except AssertionError:
            now = self.progress()
            still = {i: now[i] for i, step in before.items() if now[i][0] not in TERMINAL and now[i][1] <= step}
            dead = [(m.message_id, m.dead_letter_reason) for m in self.queue.peek_dead_letters(50)]
            raise AssertionError(f"jobs not moved in {timeout:.0f}s: {still}; dead letters {dead}") from None
        return time.monotonic() - started

    def wait_all_terminal(self, timeout: float = 120.0) -> None:
        try:
            wait_for(lambda: not self.unfinished(), timeout=timeout, interval=0.2)
        except AssertionError:
            raise AssertionError(f"jobs still unfinished: {self.unfinished()}\n{self.rt.log()}") from None

    def health(self) -> tuple[float, dict[str, Any]]:
        # An operator key: anonymous health says only up or down, from a check up to 5 s old.
        with httpx.Client(base_url=self.rt.url, timeout=10, headers={"X-API-Key": DEV_API_KEY}) as c:
            started = time.perf_counter()
            body = c.get("/api/health").json()
            return time.perf_counter() - started, body

    def send(self, body: bytes, message_id: str) -> None:
        self.queue.send(body, message_id=message_id)


def ledger_story(w: World, job_id: str, entry: Usage | None, usage: Usage) -> str:
    """What the ledger and the checkpoints say of one job, for a failure message."""
    month = month_of()
    total = w.objects.get(layout.ledger_key(month, "dev"))
    recent = json.loads(total.data).get("recent", {}).get(job_id) if total else None
    own = w.objects.get(layout.ledger_job_key(month, "dev", job_id))
    steps = [(cp.step, cp.total_usage.total_tokens, cp.outcome is not None) for cp in w.checkpoints.all(job_id)]
    return (
        f"entry {entry} vs usage {usage}; total's recent entry {recent}; "
        f"job's own record {own.data.decode() if own else None}; checkpoints (step, tokens, final) {steps}"
    )


def check_invariants(w: World, phase: str) -> None:
    """The issue's invariants, over every job so far; see the module docstring."""
    expected_total = Usage()
    month = month_of()
    for job_id in w.ids:
        steps = w.checkpoints.steps(job_id)
        assert steps == list(range(1, len(steps) + 1)), f"{phase}: {job_id} checkpoints not contiguous: {steps}"
        try:
            job = w.jobs.get(job_id)
        except CorruptRecord:
            assert job_id in w.unreadable, f"{phase}: {job_id} unexpectedly unreadable"
            usage = Usage()
            for cp in w.checkpoints.all(job_id):
                usage = usage + cp.usage
        else:
            assert job is not None
            assert job.status in TERMINAL, f"{phase}: {job_id} is {job.status} at step {job.step}: {job}"
            projected = [p.step for p in job.progress]
            if job_id in w.corrupt_checkpoints:
                # The corrupted checkpoint was the last; one that never got projected before it became
                # unreadable cannot be (the job fails with the reason), every one before it is.
                assert projected in (steps, steps[:-1]), f"{phase}: {job_id} progress {projected} vs {steps}"
            else:
                assert projected == steps, f"{phase}: {job_id} progress {job.progress} vs {steps}"
            usage = job.usage
            if job_id not in w.corrupt_checkpoints:
                summed = Usage()
                for cp in w.checkpoints.all(job_id):
                    summed = summed + cp.usage
                assert usage == summed, f"{phase}: {job_id} usage {usage} != sum of its checkpoints {summed}"
            if job.status == "succeeded":
                assert w.objects.get(layout.report_key(job_id)) is not None, f"{phase}: {job_id} has no report"
        expected_total = expected_total + usage
        if usage.total_tokens:
            entry = w.ledger.by_job("dev", month).get(job_id)
            assert entry == usage, f"{phase}: ledger entry of {job_id}: {ledger_story(w, job_id, entry, usage)}"
    assert w.ledger.total("dev", month) == expected_total, f"{phase}: ledger month total != sum of job usage"
    took, body = w.health()
    assert took < 1.0, f"{phase}: health took {took:.2f}s"
    assert body["status"] == "ok", f"{phase}: {body}"
    assert body["workers"]["agent_step"] == {
        "status": "up",
        "configured": WORKERS,
        "alive": WORKERS,
        "lock_renewer": "up",
    }, body
    w.figures.invariant_checks += 1


# --- phases ------------------------------------------------------------------------------------------


def kills_and_duplicates(w: World, rng: random.Random) -> None:
    """Random SIGKILLs while 200 jobs run; duplicates, strays and junk sent meanwhile; then corruption."""
    ids = w.submit(200, "kills")
    for kill in range(3):
        time.sleep(rng.uniform(1.0, 2.5))
        inject_duplicates(w, rng, ids)
        if kill == 0:
            kill_with_jobs_mid_way(w)
        else:
            w.rt.kill9()
            w.figures.kills += 1
        killed_at = time.monotonic()
        in_flight = w.unfinished()
        if kill == 0:  # at least two jobs are mid-way at the first kill
            corrupt_two_jobs(w, rng, in_flight)
            in_flight = {i: s for i, s in in_flight.items() if i not in w.unreadable and i not in w.corrupt_checkpoints}
        w.rt.start()
        w.wait_until_moved(in_flight)
        w.figures.recovery_after_kill.append(round(time.monotonic() - killed_at, 2))
    w.wait_all_terminal()
    # Old committed steps of finished jobs, sent again under fresh ids: the ledger must not go back.
    finished = [i for i, (status, _) in w.progress().items() if status == "succeeded"]
    for job_id in rng.sample(finished, 50):
        step = rng.randint(1, max(1, len(w.checkpoints.steps(job_id)) - 1))
        w.send(StepMessage(job_id=job_id, step=step).model_dump_json().encode(), f"{job_id}:{step}:late")
        w.figures.duplicates += 1
    time.sleep(2.0)  # the runtime handles them (cross-process sends are polled every 200 ms)


def kill_with_jobs_mid_way(w: World, attempts: int = 10) -> None:
    """SIGKILL at a moment when at least two jobs are mid-way, so two can be corrupted.

    Continuations are served first, so only about as many jobs as workers are mid-way at once, and
    on a loaded machine those may finish between a look and the kill: look again after the kill,
    and when too few were caught mid-way, restart and try again (each try is a kill too).
    """
    for _ in range(attempts):
        deadline = time.monotonic() + 60
        while sum(step >= 1 for step in w.unfinished().values()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        w.rt.kill9()
        w.figures.kills += 1
        if sum(step >= 1 for step in w.unfinished().values()) >= 2:
            return
        w.rt.start()
    raise AssertionError(f"no kill in {attempts} caught two jobs mid-way: {w.unfinished()}")


def inject_duplicates(w: World, rng: random.Random, ids: list[str]) -> None:
    for job_id in rng.sample(ids, 20):
        steps = w.checkpoints.steps(job_id)
        last = max(steps, default=0)
        if last:  # a committed step, again
            w.send(StepMessage(job_id=job_id, step=last).model_dump_json().encode(), f"{job_id}:{last}:dup")
        # the step in flight (or the next one), again under a fresh id
        w.send(StepMessage(job_id=job_id, step=last + 1).model_dump_json().encode(), f"{job_id}:{last + 1}:dup")
        w.send(StepMessage(job_id=job_id, step=last + 20).model_dump_json().encode(), f"{job_id}:{last + 20}")
        w.figures.duplicates += 2 if last else 1
        w.figures.strays += 1
    for _ in range(2):
        token = rng.randrange(10**9)
        w.send(b"{not a step", f"junk-{token}")
        w.send(StepMessage(job_id=f"job-gone-{token}", step=1).model_dump_json().encode(), f"job-gone-{token}:1")
        w.figures.malformed += 2


def corrupt_two_jobs(w: World, rng: random.Random, in_flight: dict[str, int]) -> None:
    """While the runtime is down: one job's last checkpoint and another job's record become unreadable."""
    candidates = sorted(i for i, step in in_flight.items() if step >= 1)
    assert len(candidates) >= 2, f"too few jobs mid-way at the kill to corrupt two: {in_flight}"
    for job_id in rng.sample(candidates, len(candidates)):
        last = max(w.checkpoints.steps(job_id))
        cp = w.checkpoints.get(job_id, last)
        if cp is not None and cp.outcome is None:
            corrupt(w.objects, layout.checkpoint_key(job_id, last))
            w.corrupt_checkpoints.add(job_id)
            break
    record = next(i for i in candidates if i not in w.corrupt_checkpoints)
    corrupt(w.objects, layout.job_key(record))
    w.unreadable.add(record)


def outage(w: World, name: str, path: Path) -> None:
    """Hold one database locked for OUTAGE_SECONDS while jobs run; health and submits answer fast."""
    w.submit(40, name)
    time.sleep(0.5)
    holder = lock_for(path, OUTAGE_SECONDS)
    w.figures.outages.append(f"{name} locked {OUTAGE_SECONDS:.0f}s")
    observe_outage(w, name, "queue" if name == "queue" else "storage")
    holder.join()
    recover(w, name)


def observe_outage(w: World, name: str, dependency: str) -> None:
    time.sleep(1.0)
    took, body = w.health()
    w.figures.health_ms_during_outage[name] = round(took * 1000, 1)
    assert took < 1.0, f"{name}: health took {took:.2f}s"
    assert body["status"] == "degraded" and body["dependencies"][dependency]["status"] == "down", body
    with w.client() as c:
        started = time.perf_counter()
        r = c.post("/api/jobs", json={"task": "submitted during an outage"})
        took = time.perf_counter() - started
    w.figures.submit_ms_during_outage[name] = round(took * 1000, 1)
    assert r.status_code == 503 and r.headers.get("Retry-After"), (r.status_code, r.text)
    assert took < 1.5, f"{name}: submit held {took:.2f}s"


def recover(w: World, name: str) -> None:
    released = time.monotonic()
    waiting = w.unfinished()
    w.wait_until_moved(waiting)
    w.figures.recovery_after_outage[name] = round(time.monotonic() - released, 2)
    w.wait_all_terminal()


@contextlib.contextmanager
def tiny_disk(data_dir: Path) -> Iterator[str]:
    """A tmpfs for the data directory where mounting is allowed; otherwise nothing (RLIMIT_FSIZE is used)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=384m", "tmpfs", str(data_dir)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield "tmpfs" if mounted else "rlimit"
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(data_dir)], capture_output=True)


def full_disk(w: World, how: str) -> None:
    """Fill the disk for a few seconds while jobs run; nothing is lost, workers survive, health answers fast."""
    w.submit(40, "disk-full")
    time.sleep(0.3)
    filler = w.data_dir / "filler.bin"
    probes: list[str] = []
    assert w.rt.proc is not None
    pid = w.rt.proc.pid
    if how == "tmpfs":
        for db in (w.data_dir / "queue.sqlite3", w.data_dir / "blobs" / "objects.sqlite3"):
            with contextlib.closing(sqlite3.connect(db, timeout=5)) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no WAL slack left to write into
        fill(filler)
    else:
        soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, hard))  # any write that grows a file fails (EFBIG)
    w.figures.outages.append(f"disk full ({how}) 5s")
    try:
        if how == "tmpfs":
            probes = use_up_sqlite_slack(w)
        down = 0
        for _ in range(10):
            took, body = w.health()
            assert took < 1.0, f"disk full: health took {took:.2f}s"
            assert body["workers"]["agent_step"]["alive"] == WORKERS, body
            down += body["dependencies"]["storage"]["status"] == "down"
            time.sleep(0.5)
        w.figures.health_ms_during_outage["disk_full"] = round(took * 1000, 1)
        w.figures.outages[-1] += f", health said storage down {down}/10 times"
    finally:
        if how == "tmpfs":
            filler.unlink()
            for key in probes:
                w.objects.delete(key)
        else:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
    recover(w, "disk_full")


def use_up_sqlite_slack(w: World) -> list[str]:
    """Write 1 MB blobs until SQLite says the disk is full: its WAL and free pages hold no more room."""
    written: list[str] = []
    for n in range(400):
        try:
            w.objects.put(f"ops/disk-probe-{n}.bin", os.urandom(1 << 20))
        except DependencyUnavailable:
            return written
        written.append(f"ops/disk-probe-{n}.bin")
    raise AssertionError("the disk never filled up for SQLite")


def fill(path: Path) -> None:
    chunk = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as f:
        for size in (len(chunk), 4096, 1):
            block = chunk[:size]
            while True:
                try:
                    f.write(block)
                except OSError as exc:
                    if exc.errno not in (errno.ENOSPC, errno.EFBIG):
                        raise
                    break


def final_reckoning(w: World) -> None:
    """Dead letters worked off by the sweep timer; only the unreadable job remains, with its reason."""

    def only_unreadable_left() -> bool:
        left = [m.message_id.split(":", 1)[0] for m in w.queue.peek_dead_letters(1000)]
        return set(left) <= w.unreadable

    wait_for(only_unreadable_left, timeout=30, interval=0.5)
    listed = run_cli("jobs", "stuck", data_dir=w.data_dir, env=ENV)
    assert listed.code == 0, listed.stderr
    assert {(j["job_id"], j["state"]) for j in listed.data["jobs"]} == {(i, "unreadable") for i in w.unreadable}
    for job_id in w.corrupt_checkpoints:
        job = w.jobs.get(job_id)
        assert job is not None and job.status == "failed" and job.error and job.error.reason == "step_failed", job
    failed = {i for i, (status, _) in w.progress().items() if status == "failed"}
    assert failed == w.corrupt_checkpoints, f"jobs failed that should not have: {failed - w.corrupt_checkpoints}"


def test_faults_lose_nothing_and_stall_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    data_dir = tmp_path / "faults"
    with tiny_disk(data_dir) as disk:
        w = World(data_dir)
        w.rt.start()
        try:
            with w.client() as c:
                ingest(c)
            kills_and_duplicates(w, rng)
            check_invariants(w, "kills and duplicates")
            outage(w, "queue", data_dir / "queue.sqlite3")
            check_invariants(w, "queue outage")
            outage(w, "storage", data_dir / "blobs" / "objects.sqlite3")
            check_invariants(w, "storage outage")
            full_disk(w, disk)
            check_invariants(w, "disk full")
            final_reckoning(w)
            check_invariants(w, "after the sweep")
        except BaseException:
            print(w.rt.log())
            raise
        finally:
            w.rt.stop()
            w.queue.close()
            w.objects.close()
            print(f"fault suite (seed {seed}):", json.dumps(w.figures.__dict__, default=str))
