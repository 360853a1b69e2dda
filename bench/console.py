"""Operator console page load times on the embedded runtime with 10,000 jobs: p50/p95 per page.

Seeds a data directory with N job records (default 10,000, six steps of progress each, the
statuses and failure reasons of a working month), their ledger and a report, starts
`python -m shared.runtime` on it, signs in with the operator key and loads every page over
loopback. The anchor is GET /api/jobs?limit=20 measured in the same run; each page is also
shown as a ratio to it. "first" is the page's first load after the runtime started (the overview
remembers finished jobs' outcomes and the usage page a parsed ledger, so their first load is the
cold one). Two spreads of the jobs' submission times:

- month: spread evenly over the last 30 days (about 330 a day);
- burst: all of them submitted in the last 24 hours (the overview's day window holds every job).

    python bench/console.py [--jobs 10000] [--requests 30] [--spread month|burst|both]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.bootstrap import build_backends  # noqa: E402
from shared.contracts import Citation, JobError, Policy, Report, StepSummary, Usage, utcnow  # noqa: E402
from shared.contracts import Job as JobRecord  # noqa: E402
from shared.engine import layout  # noqa: E402
from shared.settings import DEV_API_KEY, Settings  # noqa: E402

REASONS = ["citations_missing", "policy_limit", "model_quota", "retries_exhausted", "budget_exceeded"]
KINDS = ["model", "tools"]


def seed(data_dir: Path, jobs: int, spread: timedelta) -> str:
    """Write `jobs` job records (tenant dev) with markers and the month's ledger; the id of one with a report."""
    b = build_backends(Settings(DATA_DIR=str(data_dir)))
    rng = random.Random(16)
    now = utcnow()
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    ledger: dict[str, dict[str, int]] = {}
    records: list[JobRecord] = []
    for _ in range(jobs):
        created = now - spread * rng.random()
        roll = rng.random()
        status = "succeeded" if roll < 0.9 else "failed" if roll < 0.96 else "cancelled" if roll < 0.98 else "running"
        if created > now - timedelta(minutes=2):
            status = "running"
        usage = Usage(prompt_tokens=rng.randint(800, 6000), completion_tokens=rng.randint(100, 900))
        job_id = f"job-{int(created.timestamp() * 1000):x}-{rng.getrandbits(64):016x}"
        progress = [
            StepSummary(
                step=n,
                kind=KINDS[(n - 1) % 2],
                summary=f"step {n}: searched the runbook for the question",
                tokens=usage.total_tokens // 3 if n % 2 else 0,
                duration_ms=rng.uniform(1, 900),
                at=created + timedelta(seconds=n),
            )
            for n in range(1, 7)
        ]
        record = JobRecord(
            id=job_id,
            tenant="dev",
            task=f"Question {rng.randint(1, 10**6)}: what does the runbook say about the dead-letter queue?",
            policy=Policy(),
            status=status,  # type: ignore[arg-type]
            step=6,
            progress=progress,
            usage=usage,
            error=JobError(reason=rng.choice(REASONS), detail="seeded") if status == "failed" else None,
            created_at=created,
            updated_at=created + timedelta(seconds=7),
            started_at=created + timedelta(seconds=1),
            finished_at=created + timedelta(seconds=7) if status != "running" else None,
        )
        records.append(record)
        if created >= month_start:
            ledger[job_id] = {**usage.model_dump(), "step": 6}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(b.jobs.create, records, chunksize=200))
    b.objects.put(
        layout.ledger_key(now.strftime("%Y-%m"), "dev"),
        json.dumps({"tenant": "dev", "month": now.strftime("%Y-%m"), "jobs": ledger}).encode(),
    )
    shown = next(r for r in sorted(records, key=lambda r: r.created_at, reverse=True) if r.status == "succeeded")
    quote = "Messages that exceed the maximum delivery count are moved to the dead-letter sub-queue."
    b.reports.save(
        shown.id,
        Report(
            markdown="## Findings\n\n- Dead letters wait for the sweep [1].\n",
            citations=[
                Citation(
                    n=1,
                    doc_id="dead-letter-queue",
                    chunk_id=0,
                    title="Handling the dead-letter queue",
                    quote=quote,
                    start=0,
                    end=len(quote),
                )
            ],
        ),
    )
    b.close()
    return shown.id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def measure(data_dir: Path, job_id: str, requests: int) -> list[tuple[str, float, float, float]]:
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(data_dir), "RATE_LIMIT_PER_MINUTE": "1000000", "LOG_LEVEL": "WARNING"}
    for name in ("BACKUP_SCHEDULE", "DLQ_SWEEP_SCHEDULE", "WEEKLY_CHECKS_SCHEDULE", "RETENTION_SCHEDULE"):
        env[name] = "0 0 0 1 1 *"
    log = open(data_dir / "runtime.out", "ab")  # noqa: SIM115 - lives as long as the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.runtime", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if c.get("/api/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the runtime did not start; see runtime.out in the data directory")
                time.sleep(0.1)
            for path in sorted((ROOT / "samples").glob("*.md")):
                c.post(
                    "/api/documents",
                    params={"filename": path.name},
                    content=path.read_bytes(),
                    headers={"Content-Type": "text/markdown", "X-API-Key": DEV_API_KEY},
                ).raise_for_status()
            form = c.get("/console/sign-in").text
            csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
            c.post("/console/sign-in", data={"key": DEV_API_KEY, "csrf": csrf, "next": "/console/"})
            pages = {
                "anchor: GET /api/jobs?limit=20": ("/api/jobs?limit=20", {"X-API-Key": DEV_API_KEY}),
                "Overview /console/": ("/console/", {}),
                "Overview live fragment": ("/console/overview/live", {}),
                "Jobs (newest 50)": ("/console/jobs", {}),
                "Jobs status=failed": ("/console/jobs?status=failed", {}),
                "Jobs text filter": ("/console/jobs?text=question+4242", {}),
                "Job page (with report)": (f"/console/jobs/{job_id}", {}),
                "Citation passage": (f"/console/jobs/{job_id}/citations/1", {}),
                "Dead letters": ("/console/dead-letters", {}),
                "Knowledge + search": ("/console/knowledge?q=dead+letter", {}),
                "Usage": ("/console/usage", {}),
                "Maintenance": ("/console/maintenance", {}),
            }
            rows = []
            for name, (path, headers) in pages.items():
                started = time.perf_counter()
                c.get(path, headers=headers).raise_for_status()  # the first load: caches cold
                first = (time.perf_counter() - started) * 1000
                times = []
                for _ in range(requests):
                    started = time.perf_counter()
                    response = c.get(path, headers=headers)
                    times.append((time.perf_counter() - started) * 1000)
                    response.raise_for_status()
                rows.append((name, first, pct(times, 0.5), pct(times, 0.95)))
            return rows
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--spread", choices=["month", "burst", "both"], default="both")
    args = parser.parse_args()
    spreads = {"month": timedelta(days=30), "burst": timedelta(hours=23)}
    chosen = list(spreads) if args.spread == "both" else [args.spread]
    for spread in chosen:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            job_id = seed(Path(tmp), args.jobs, spreads[spread])
            seeded = time.perf_counter() - started
            print(f"\n{args.jobs} jobs submitted over the last {spreads[spread]} (seeded in {seeded:.1f} s)")
            rows = measure(Path(tmp), job_id, args.requests)
            anchor = rows[0][2]
            print(f"{'page':<34}{'first ms':>9}{'p50 ms':>9}{'p95 ms':>9}{'x anchor':>10}   ({args.requests} requests)")
            for name, first, p50, p95 in rows:
                print(f"{name:<34}{first:>9.1f}{p50:>9.1f}{p95:>9.1f}{p50 / anchor:>10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
