"""Progress events against polling, on the embedded runtime over loopback: how late a client learns of a
committed step, and how many requests it makes per job.

Anchor (measured in the same run): the old way, GET /api/jobs/{id} every 50 ms. Candidate: one SSE
stream per job (GET /api/jobs/{id}/events), woken by the commit path.

    python bench/events.py [--jobs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.demo import ROOT, free_port, start_runtime, wait_healthy  # noqa: E402
from shared.settings import DEV_API_KEY  # noqa: E402

TASK = "How are dead-lettered messages handled?"
POLL_SECONDS = 0.05


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def lag_ms(at: str) -> float:
    return (time.time() - datetime.fromisoformat(at).timestamp()) * 1000


def by_polling(c: httpx.Client) -> tuple[list[float], int]:
    job_id = c.post("/api/jobs", json={"task": TASK}).json()["id"]
    lags, seen, requests = [], 0, 0
    while True:
        job = c.get(f"/api/jobs/{job_id}").json()
        requests += 1
        for p in job["progress"][seen:]:
            lags.append(lag_ms(p["at"]))
        seen = len(job["progress"])
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return lags, requests
        time.sleep(POLL_SECONDS)


def by_stream(c: httpx.Client) -> tuple[list[float], int]:
    job_id = c.post("/api/jobs", json={"task": TASK}).json()["id"]
    lags = []
    headers = {"Accept": "text/event-stream"}
    with c.stream("GET", f"/api/jobs/{job_id}/events", headers=headers, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if event["type"] == "step":
                    lags.append(lag_ms(event["data"]["at"]))
    return lags, 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--model-latency-ms", type=float, default=100.0, help="offline model think time per turn")
    args = parser.parse_args()
    os.environ["OFFLINE_MODEL_LATENCY_MS"] = str(args.model_latency_ms)  # jobs that take a moment, as real ones do
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = start_runtime(Path(tmp), port, Path(tmp) / "runtime.out")
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": DEV_API_KEY}) as c:
                wait_healthy(c, proc, Path(tmp) / "runtime.out")
                for path in sorted((ROOT / "samples").glob("*.md")):
                    c.post(
                        "/api/documents",
                        params={"filename": path.name},
                        content=path.read_bytes(),
                        headers={"Content-Type": "text/markdown"},
                    ).raise_for_status()
                results = {}
                for name, run in (("poll every 50 ms (anchor)", by_polling), ("SSE stream", by_stream)):
                    lags: list[float] = []
                    requests = 0
                    for _ in range(args.jobs):
                        job_lags, job_requests = run(c)
                        lags += job_lags
                        requests += job_requests
                    results[name] = (pct(lags, 0.5), pct(lags, 0.99), requests / args.jobs)
                header = f"{'client':<28}{'lag p50 ms':>12}{'lag p99 ms':>12}{'requests/job':>14}"
                print(f"{header}   ({args.jobs} jobs each)")
                # lag: from a step's commit to the client knowing of it
                for name, (p50, p99, per_job) in results.items():
                    print(f"{name:<28}{p50:>12.1f}{p99:>12.1f}{per_job:>14.1f}")
                anchor, stream = results["poll every 50 ms (anchor)"], results["SSE stream"]
                print(
                    f"ratio SSE/anchor: lag p50 {stream[0] / anchor[0]:.2f}x, "
                    f"requests per job {stream[2] / anchor[2]:.3f}x"
                )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
