"""REST API throughput and latency against the embedded runtime, beside a minimal anchor, and runtime RSS.

Ours: `python -m shared.runtime --no-consumers --no-timers` (the API process alone; the consumer
is measured by bench/steps.py), and once more with its consumer running the submitted jobs. Anchor, same run,
same client: a minimal FastAPI app served by the same uvicorn whose submit inserts one row into
SQLite with an fsync'd commit (WAL, synchronous=FULL), and whose GET reads it back. The client
runs --connections threads, each with its own keep-alive connection, for --seconds per route and
server. Both servers run at once and are timed in turn, route by route (ours, anchor, anchor, ours,
half the time each), so that a machine whose load drifts during the run (other processes on a shared
host) weighs on both sides of each ratio alike.
RSS: the runtime's resident memory with 16 jobs in flight (the offline model given think time).

    python bench/api.py [--connections 50] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.figures import Figure, save, show  # noqa: E402
from shared.settings import DEV_API_KEY  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEADERS = {"X-API-Key": DEV_API_KEY}

ANCHOR_APP = textwrap.dedent(
    """
    import os, sqlite3, threading, uuid
    from fastapi import FastAPI
    from pydantic import BaseModel

    db = sqlite3.connect(os.environ["ANCHOR_DB"], check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, task TEXT)")
    lock = threading.Lock()
    app = FastAPI()

    class JobRequest(BaseModel):
        task: str

    @app.post("/api/jobs", status_code=202)
    def submit(request: JobRequest) -> dict:
        job_id = uuid.uuid4().hex
        with lock:
            db.execute("INSERT INTO jobs VALUES (?, ?)", (job_id, request.task))
        return {"id": job_id, "status": "queued"}

    @app.get("/api/jobs/{job_id}")
    def get(job_id: str) -> dict:
        with lock:
            row = db.execute("SELECT id, task FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return {"id": row[0], "task": row[1], "status": "queued"}

    @app.get("/api/health")
    def health() -> dict:
        with lock:
            db.execute("SELECT 1").fetchone()
        return {"status": "ok"}
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(base: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode} before it answered")
        try:
            if httpx.get(f"{base}/api/health", headers=HEADERS, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{base} did not answer within {timeout} s")


# Limits stay on (their cost is ours) but out of reach: bench clients send far past 600 a minute.
LIFTED_LIMITS = {"RATE_LIMIT_PER_MINUTE": "100000000", "TENANT_RATE_LIMIT_PER_MINUTE": "100000000"}


def ingest_samples(c: httpx.Client) -> None:
    """The samples/ corpus into a running runtime, over the REST API."""
    for path in sorted((ROOT / "samples").glob("*.md")):
        c.post(
            "/api/documents",
            params={"filename": path.name},
            content=path.read_bytes(),
            headers={"Content-Type": "text/markdown"},
        ).raise_for_status()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(
    base: str,
    request: Callable[[httpx.Client], httpx.Response],
    connections: int,
    seconds: float,
    server_pid: int | None = None,
) -> dict:
    """Requests/s, p99 ms and non-2xx count with `connections` client threads for `seconds`.

    With server_pid, also the server's CPU seconds meanwhile: CPU per request is a figure a busy,
    shared machine disturbs far less than requests per second.
    """
    cpu_before = cpu_seconds(server_pid) if server_pid else 0.0
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        mine, failed = [], 0
        with httpx.Client(base_url=base, headers=HEADERS, timeout=30) as client:
            while time.monotonic() < stop:
                t = time.perf_counter()
                response = request(client)
                mine.append((time.perf_counter() - t) * 1000)
                failed += response.status_code >= 300
        with lock:
            latencies.extend(mine)
            failures[0] += failed

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - t0
    ordered = sorted(latencies)
    return {
        "rps": len(ordered) / elapsed,
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "failed": failures[0],
        "latencies": ordered,
        "elapsed": elapsed,
        "cpu": cpu_seconds(server_pid) - cpu_before if server_pid else 0.0,
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def routes(job_id: str) -> dict[str, Callable[[httpx.Client], httpx.Response]]:
    return {
        "POST /api/jobs": lambda c: c.post("/api/jobs", json={"task": "What does the sweep do?"}),
        "GET /api/jobs/{id}": lambda c: c.get(f"/api/jobs/{job_id}"),
        "GET /api/health": lambda c: c.get("/api/health"),
    }


def measure_in_turn(
    bases: dict[str, str], pids: dict[str, int], connections: int, seconds: float
) -> dict[str, dict[str, dict]]:
    """{server: {route: figures}}: each route timed on each server in turn, ABBA, `seconds` per server in all."""
    calls: dict[str, dict[str, Callable[[httpx.Client], httpx.Response]]] = {}
    for server, base in bases.items():
        with httpx.Client(base_url=base, headers=HEADERS) as c:
            calls[server] = routes(c.post("/api/jobs", json={"task": "How are dead letters handled?"}).json()["id"])
    first, second = list(bases)
    results: dict[str, dict[str, dict]] = {server: {} for server in bases}
    for name in routes(""):
        parts: dict[str, list[dict]] = {first: [], second: []}
        for server in (first, second, second, first):
            parts[server].append(load(bases[server], calls[server][name], connections, seconds / 2, pids[server]))
        for server, halves in parts.items():
            results[server][name] = combined(halves)
    return results


def combined(parts: list[dict]) -> dict:
    """One figure from several timed parts: requests over time, p99 over all latencies, failures summed."""
    ordered = sorted(latency for part in parts for latency in part["latencies"])
    return {
        "rps": len(ordered) / sum(part["elapsed"] for part in parts),
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "failed": sum(part["failed"] for part in parts),
        "cpu_ms": 1000 * sum(part["cpu"] for part in parts) / max(1, len(ordered)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    env = {**os.environ, **LIFTED_LIMITS, "LOG_LEVEL": "WARNING"}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        ours_proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shared.runtime",
                "--port",
                str(port),
                "--data-dir",
                tmp,
                "--no-timers",
                "--no-consumers",
            ],
            cwd=ROOT,
            env={**env, "DATA_DIR": tmp},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        anchor_port = free_port()
        app_path = Path(tmp) / "anchor_app.py"
        app_path.write_text(ANCHOR_APP, encoding="utf-8")
        anchor_proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "anchor_app:app", "--port", str(anchor_port), "--log-level", "warning"],
            cwd=tmp,
            env={**env, "ANCHOR_DB": str(Path(tmp) / "anchor.sqlite3")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            bases = {"ours": f"http://127.0.0.1:{port}", "anchor": f"http://127.0.0.1:{anchor_port}"}
            wait_up(bases["ours"], ours_proc)
            wait_up(bases["anchor"], anchor_proc)
            pids = {"ours": ours_proc.pid, "anchor": anchor_proc.pid}
            measured = measure_in_turn(bases, pids, args.connections, args.seconds)
            ours, anchor = measured["ours"], measured["anchor"]
        finally:
            for proc in (ours_proc, anchor_proc):
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        port = free_port()
        busy = str(Path(tmp) / "with-consumer")
        with_consumer = subprocess.Popen(
            [sys.executable, "-m", "shared.runtime", "--port", str(port), "--data-dir", busy, "--no-timers"],
            cwd=ROOT,
            env={**env, "DATA_DIR": busy},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_up(base, with_consumer)
            with httpx.Client(base_url=base, headers=HEADERS) as c:
                submitted = load(base, routes("")["POST /api/jobs"], args.connections, args.seconds)
                finished_at = time.monotonic() + 20
                while time.monotonic() < finished_at:
                    page = c.get("/api/jobs", params={"limit": 1, "status": "queued"}).json()
                    if not page["jobs"]:
                        break
                    time.sleep(0.5)
        finally:
            with_consumer.send_signal(signal.SIGTERM)
            with_consumer.wait(30)
        rss = rss_with_jobs_in_flight(Path(tmp) / "rss", env, 16)
    figures = []
    for name, goal in (("POST /api/jobs", 0.7), ("GET /api/jobs/{id}", 0.7), ("GET /api/health", 0.7)):
        ratio_met = ours[name]["rps"] >= goal * anchor[name]["rps"]
        p99_met = name != "POST /api/jobs" or ours[name]["p99"] <= 50
        figures.append(
            Figure(
                f"{name} req/s, {args.connections} connections (p99 {ours[name]['p99']:.0f} ms, "
                f"{ours[name]['failed']} non-2xx, {ours[name]['cpu_ms']:.2f} ms CPU a request)",
                ours[name]["rps"],
                "req/s",
                f">= {goal}x anchor" + (", p99 <= 50 ms" if name == "POST /api/jobs" else "") + ", 0 errors",
                ratio_met and p99_met and ours[name]["failed"] == 0,
                f"minimal FastAPI + fsync'd SQLite (p99 {anchor[name]['p99']:.0f} ms, "
                f"{anchor[name]['cpu_ms']:.2f} ms CPU a request)",
                anchor[name]["rps"],
            )
        )
    figures.append(Figure("runtime RSS, 16 jobs in flight", rss, "MB", "<= 150 MB", rss <= 150))
    context = (
        f"API process alone (timers and consumer off) unless said, {args.connections} client threads x "
        f"{args.seconds:.0f} s per route and server, ours and the anchor timed in turn (ABBA halves), the client on "
        "the same machine; POST /api/jobs with the consumer running: "
        f"{submitted['rps']:.0f} req/s, p99 {submitted['p99']:.0f} ms"
    )
    print(context)
    show(figures)
    save("api", figures, context)
    return 0


def rss_with_jobs_in_flight(data_dir: Path, env: dict[str, str], jobs: int) -> float:
    """The runtime's RSS while `jobs` jobs run at once (each model turn takes 200 ms of think time)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.runtime", "--port", str(port), "--data-dir", str(data_dir), "--no-timers"],
        cwd=ROOT,
        env={**env, "DATA_DIR": str(data_dir), "OFFLINE_MODEL_LATENCY_MS": "200", "MAX_CONCURRENT_JOBS": str(jobs)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_up(base, proc)
        with httpx.Client(base_url=base, headers=HEADERS) as c:
            ingest_samples(c)
            for _ in range(jobs):
                c.post("/api/jobs", json={"task": "How are dead letters handled?"}).raise_for_status()
            time.sleep(1.0)  # every job past its first step
            peak = 0.0
            for _ in range(10):
                peak = max(peak, rss_mb(proc.pid))
                time.sleep(0.1)
        return peak
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


if __name__ == "__main__":
    raise SystemExit(main())
