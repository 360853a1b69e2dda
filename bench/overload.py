"""Fair under overload: completed jobs/s while submits arrive at 2x the service rate, against that rate.

The embedded runtime (timers off, the offline model) on loopback, in two shapes: split (the API in
one runtime process, the steps in another on the same DATA_DIR, as Flex Consumption scales HTTP and
Service Bus triggers on separate instances) and single (both in one process, sharing one GIL):
1. unloaded service rate: --warmup jobs submitted at once, then no more submits; the rate is
   jobs finished / (last finish - first submit);
2. overload: POST /api/jobs paced at --factor x that rate for --seconds from --connections client
   threads (open loop: a late request does not push back the next one's due time), then the
   completed jobs/s within the window and p95 submit-to-finish of the jobs that finished in it,
   read back from each job's record (created_at, finished_at). Jobs still queued at the end are
   counted, not waited for: the run is bounded by --seconds plus the read-back.
The goal: completed jobs/s >= 80% of the unloaded rate (started jobs finish because continuation
steps are served before the first steps of new jobs).

    python bench/overload.py [--seconds 60] [--factor 2] [--warmup 200] [--connections 8] [--modes split,single]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.api import HEADERS, LIFTED_LIMITS, ROOT, cpu_seconds, free_port, ingest_samples, wait_up  # noqa: E402
from bench.figures import Figure, save, show  # noqa: E402

TASK = "How are dead letters handled?"
GOAL = 0.8
MAX_SECONDS = 300.0  # bounded: a typo must not run for an hour


def _stamp(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text).timestamp()


def _records(c: httpx.Client, ids: list[str]) -> list[dict]:
    return [c.get(f"/api/jobs/{job_id}").raise_for_status().json() for job_id in ids]


def unloaded_rate(c: httpx.Client, jobs: int, timeout: float) -> tuple[float, float]:
    """(jobs/s, p95 submit-to-finish s) for `jobs` jobs submitted at once and nothing after."""
    ids = [c.post("/api/jobs", json={"task": TASK}).json()["id"] for _ in range(jobs)]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = _records(c, ids)
        if all(r.get("finished_at") for r in records):
            break
        time.sleep(0.25)
    else:
        raise SystemExit(f"{jobs} warm-up jobs did not finish within {timeout:.0f} s")
    created = [_stamp(r["created_at"]) or 0.0 for r in records]
    finished = [_stamp(r["finished_at"]) or 0.0 for r in records]
    latencies = sorted(f - s for s, f in zip(created, finished, strict=True))
    return jobs / (max(finished) - min(created)), latencies[int(0.95 * (len(latencies) - 1))]


def overload(base: str, rate: float, seconds: float, connections: int) -> tuple[list[str], float, float, int]:
    """Submit at `rate` jobs/s for `seconds`: (job ids, window start, window end, failed submits)."""
    ids: list[str] = []
    failed = [0]
    lock = threading.Lock()
    start = time.time() + 0.2
    interval = 1.0 / rate
    total = int(seconds * rate)

    def worker(k: int) -> None:
        mine, bad = [], 0
        with httpx.Client(base_url=base, headers=HEADERS, timeout=30) as client:
            for n in range(k, total, connections):
                due = start + n * interval
                wait = due - time.time()
                if wait > 0:
                    time.sleep(wait)
                response = client.post("/api/jobs", json={"task": TASK})
                if response.status_code == 202:
                    mine.append(response.json()["id"])
                else:
                    bad += 1
        with lock:
            ids.extend(mine)
            failed[0] += bad

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ids, start, max(time.time(), start + seconds), failed[0]


def start_runtime(data_dir: str, env: dict[str, str], *flags: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.runtime", "--port", str(port), "--data-dir", data_dir, "--no-timers", *flags],
        cwd=ROOT,
        env={**env, "DATA_DIR": data_dir},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    wait_up(base, proc)
    return proc, base


def run(split: bool, args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    """One measurement: the unloaded rate, then the overload window, on a fresh data directory."""
    # The bench measures the service rate, not the tenant's limits: thousands of jobs would pass the
    # request limits and the monthly token budget (5M tokens, about 2,300 offline jobs), and jobs
    # refused or failed by the budget would count as fast service.
    env = {**os.environ, **LIFTED_LIMITS, "MONTHLY_TOKEN_BUDGET": str(10**12), "LOG_LEVEL": "WARNING"}
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            # Split: the API in one process, the steps in another on the same DATA_DIR, as Flex
            # Consumption scales HTTP and Service Bus triggers on separate instances.
            api, base = start_runtime(tmp, env, "--no-consumers") if split else start_runtime(tmp, env)
            procs.append(api)
            if split:
                procs.append(start_runtime(tmp, env)[0])
            with httpx.Client(base_url=base, headers=HEADERS, timeout=60) as c:
                ingest_samples(c)
                unloaded_rate(c, 8, 120)  # warm caches and the index, not counted
                cpu0 = [cpu_seconds(p.pid) for p in procs]
                rate, unloaded_p95 = unloaded_rate(c, args.warmup, 300)
                cpu1 = [cpu_seconds(p.pid) for p in procs]
                ids, start, end, failed = overload(base, args.factor * rate, seconds, args.connections)
                cpu2 = [cpu_seconds(p.pid) for p in procs]
                records = _records(c, ids)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(30)
    # Completed means succeeded: a job that failed (a policy limit, a dead letter) is no service.
    done = [r for r in records if r["status"] == "succeeded" and (_stamp(r.get("finished_at")) or float("inf")) <= end]
    latencies = sorted((_stamp(r["finished_at"]) or 0.0) - (_stamp(r["created_at"]) or 0.0) for r in done)
    statuses: dict[str, int] = {}
    for r in records:
        error = r.get("error") or {}
        status = f"{r['status']} ({error.get('reason')})" if error.get("reason") else r["status"]
        statuses[status] = statuses.get(status, 0) + 1
    # CPU ms per job unloaded (all processes), and in the split shape the API's CPU ms per submit.
    job_cpu_ms = sum(b - a for a, b in zip(cpu0, cpu1, strict=True)) / args.warmup * 1000
    submit_cpu_ms = (cpu2[0] - cpu1[0]) / max(1, len(ids) + failed) * 1000 if split else None
    # The steps' CPU per job finished in the window (the consumer process; in the single shape the one
    # process, submits included): against job_cpu_ms it shows whether a job costs more under load.
    step_cpu_ms = (cpu2[-1] - cpu1[-1]) / max(1, len(done)) * 1000
    return {
        "job_cpu_ms": job_cpu_ms,
        "submit_cpu_ms": submit_cpu_ms,
        "step_cpu_ms": step_cpu_ms,
        "overload_cpu_s": [b - a for a, b in zip(cpu1, cpu2, strict=True)],
        "rate": rate,
        "unloaded_p95": unloaded_p95,
        "completed": len(done) / (end - start),
        "p95": latencies[int(0.95 * (len(latencies) - 1))] if latencies else float("nan"),
        "submitted": len(ids),
        "failed": failed,
        "statuses": statuses,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help=f"overload window (at most {MAX_SECONDS:.0f})")
    parser.add_argument("--factor", type=float, default=2.0, help="submit rate as a multiple of the service rate")
    parser.add_argument(
        "--warmup",
        type=int,
        default=200,
        help="jobs that measure the unloaded service rate: a few seconds of work, so one slow second weighs little",
    )
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument(
        "--modes", default="split,single", help="split (API and steps in two processes), single (one), or both"
    )
    args = parser.parse_args()
    seconds = min(args.seconds, MAX_SECONDS)
    figures, notes = [], []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        if mode not in ("split", "single"):
            raise SystemExit(f"unknown mode {mode!r}: use split and/or single")
        r = run(mode == "split", args, seconds)
        shape = "API and steps in two runtimes on one DATA_DIR" if mode == "split" else "API and steps in one runtime"
        figures.append(
            Figure(
                f"completed jobs/s, POST at {args.factor:g}x the service rate for {seconds:.0f} s, {shape} "
                f"(p95 submit-to-finish {r['p95']:.1f} s; unloaded {r['unloaded_p95']:.1f} s)",
                r["completed"],
                "jobs/s",
                f">= {GOAL:.0%} of the unloaded service rate",
                r["completed"] >= GOAL * r["rate"],
                "unloaded service rate",
                r["rate"],
            )
        )
        cpu = f"CPU {r['job_cpu_ms']:.0f} ms per job unloaded"
        if r["submit_cpu_ms"] is not None:
            cpu += f", the API's {r['submit_cpu_ms']:.1f} ms per submit under load"
        who = "the steps' runtime" if mode == "split" else "the runtime"
        cpu += f", {who}: {r['step_cpu_ms']:.0f} ms per job finished in the window"
        cpu += ", CPU s in the window: " + " + ".join(f"{s:.0f}" for s in r["overload_cpu_s"])
        notes.append(
            f"{mode}: {cpu}; {r['submitted'] + r['failed']} POSTs at {args.factor * r['rate']:.1f}/s "
            f"({r['failed']} refused), "
            "read back after the window: " + ", ".join(f"{n} {s}" for s, n in sorted(r["statuses"].items()))
        )
    context = (
        f"offline model, samples/ corpus, timers off; {args.warmup} jobs at once for the unloaded rate, then POSTs "
        f"from {args.connections} threads, open loop; " + "; ".join(notes)
    )
    print(context)
    show(figures)
    save("overload", figures, context)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
