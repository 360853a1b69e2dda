"""REST API latency against the embedded runtime over loopback: p50/p99 per route.

The runbook calls the API slow above 5 seconds; this prints how far from that we are.

    python bench/api.py [--requests 300]
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.demo import ROOT, free_port, start_runtime, wait_healthy  # noqa: E402
from shared.settings import DEV_API_KEY  # noqa: E402


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def timed(call) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    response = call()
    response.raise_for_status()
    return (time.perf_counter() - t) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = start_runtime(Path(tmp), port, {"RATE_LIMIT_PER_MINUTE": "1000000", "LOG_LEVEL": "WARNING"})
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": DEV_API_KEY}) as c:
                wait_healthy(c, proc)
                for path in sorted((ROOT / "samples").glob("*.md")):
                    c.post(
                        "/api/documents",
                        params={"filename": path.name},
                        content=path.read_bytes(),
                        headers={"Content-Type": "text/markdown"},
                    ).raise_for_status()
                job_id = c.post("/api/jobs", json={"task": "How are dead letters handled?"}).json()["id"]
                routes = {
                    "POST /api/jobs": lambda: c.post("/api/jobs", json={"task": "What does the sweep do?"}),
                    "GET /api/jobs/{id}": lambda: c.get(f"/api/jobs/{job_id}"),
                    "GET /api/jobs?limit=20": lambda: c.get("/api/jobs", params={"limit": 20}),
                    "GET /api/search": lambda: c.get("/api/search", params={"q": "バックアップの復元"}),
                    "GET /api/health": lambda: c.get("/api/health"),
                }
                print(f"{'route':<26}{'p50 ms':>9}{'p99 ms':>9}   ({args.requests} requests each, jobs running)")
                for name, call in routes.items():
                    latencies = [timed(call) for _ in range(args.requests)]
                    print(f"{name:<26}{pct(latencies, 0.5):>9.2f}{pct(latencies, 0.99):>9.2f}")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
