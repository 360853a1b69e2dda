"""Worker processes: the service rate of one embedded runtime with FUNCTIONS_WORKER_PROCESS_COUNT=N against 1.

A step is CPU work in Python, and one process's threads share its interpreter lock, so on a machine
with more than one core the runtime's steps/s grows with processes, not threads. Each shape runs
on a fresh DATA_DIR with the samples/ corpus ingested: --jobs jobs submitted at once over the REST
API and nothing after; the rate is jobs finished / (last finish - first submit). The shapes are
timed in turn (1, N, N, 1), so a noisy spell falls on both, and each figure is the mean of its two.

    python bench/processes.py [--processes 2] [--jobs 300]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.api import HEADERS, LIFTED_LIMITS, ingest_samples  # noqa: E402
from bench.figures import Figure, save, show  # noqa: E402
from bench.overload import start_runtime, unloaded_rate  # noqa: E402


def service_rate(processes: int, jobs: int) -> float:
    """Jobs/s of one runtime with `processes` worker processes, on a fresh data directory."""
    env = {**os.environ, **LIFTED_LIMITS, "LOG_LEVEL": "WARNING", "FUNCTIONS_WORKER_PROCESS_COUNT": str(processes)}
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start_runtime(tmp, env)
        try:
            with httpx.Client(base_url=base, headers=HEADERS, timeout=60) as c:
                ingest_samples(c)
                unloaded_rate(c, 8, 120)  # warm caches, the index and every worker process, not counted
                rate, _ = unloaded_rate(c, jobs, 300)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2, help="FUNCTIONS_WORKER_PROCESS_COUNT to compare with 1")
    parser.add_argument("--jobs", type=int, default=300, help="jobs per measurement (6 steps each)")
    args = parser.parse_args()
    rates: dict[int, list[float]] = {1: [], args.processes: []}
    for count in (1, args.processes, args.processes, 1):
        rates[count].append(service_rate(count, args.jobs))
    one, many = statistics.mean(rates[1]), statistics.mean(rates[args.processes])
    cores = os.cpu_count() or 1
    context = (
        f"one embedded runtime (timers off, offline model, samples/ corpus), {args.jobs} jobs submitted at once, "
        f"rate = jobs / (last finish - first submit); shapes in turn 1, {args.processes}, {args.processes}, 1 "
        f"on {cores} cores; runs: 1 process {', '.join(f'{r:.1f}' for r in rates[1])}, "
        f"{args.processes} processes {', '.join(f'{r:.1f}' for r in rates[args.processes])} jobs/s"
    )
    figures = [
        Figure(
            f"service rate with FUNCTIONS_WORKER_PROCESS_COUNT={args.processes}",
            many,
            "jobs/s",
            "report",
            True,
            "FUNCTIONS_WORKER_PROCESS_COUNT=1",
            one,
        )
    ]
    print(context)
    show(figures)
    save("processes", figures, context)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
