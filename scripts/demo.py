"""`make demo`: start the embedded runtime, ingest samples/, ask questions over REST, print cited reports.

Everything goes through the public REST API, as a real caller would do it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.markdown import Markdown
from rich.panel import Panel

from shared.settings import DEV_API_KEY

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "What happens when a step is delivered twice or a worker crashes, and how are dead-lettered messages handled?",
    "バックアップの復元手順と、検証が一致しない場合の扱いは？",
]
console = Console()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_runtime(data_dir: Path, port: int, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATA_DIR": str(data_dir), **(extra_env or {})}
    log = open(data_dir / "runtime.out", "ab")  # noqa: SIM115 - lives as long as the child
    return subprocess.Popen([sys.executable, "-m", "shared.runtime", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def wait_healthy(client: httpx.Client, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the runtime exited with {proc.returncode}; see its log")
        try:
            if client.get("/api/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("the runtime did not become healthy in time")


def ingest(client: httpx.Client) -> None:
    for path in sorted((ROOT / "samples").glob("*.md")):
        r = client.post("/api/documents", params={"filename": path.name}, content=path.read_bytes(),
                        headers={"Content-Type": "text/markdown"})
        r.raise_for_status()
        for doc in r.json()["indexed"]:
            console.print(f"  indexed [bold]{doc['id']}[/] ({doc['chunks']} chunks)")


def run_job(client: httpx.Client, question: str) -> None:
    console.rule(f"[bold]{question}")
    r = client.post("/api/jobs", json={"task": question})
    r.raise_for_status()
    job = r.json()
    console.print(f"submitted [cyan]{job['id']}[/] -> {r.headers['Location']}")
    shown = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job['id']}").json()
        for p in job["progress"][shown:]:
            console.print(f"  step {p['step']:>2} [dim]{p['kind']:<8}[/] {p['summary']} "
                          f"[dim]({p['duration_ms']:.0f} ms)[/]")
        shown = len(job["progress"])
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.05)
    console.print(f"status: [bold]{job['status']}[/]" + (f" ({job['error']['reason']})" if job.get("error") else ""))
    if job["status"] != "succeeded":
        raise SystemExit(1)
    report = client.get(f"/api/jobs/{job['id']}/report", headers={"Accept": "text/markdown"})
    report.raise_for_status()
    console.print(Panel(Markdown(report.text), title="report", expand=False))


def main() -> int:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="agent-demo-") as tmp:
        data_dir = Path(tmp)
        console.print(f"starting the embedded runtime on 127.0.0.1:{port} (state in {data_dir})")
        proc = start_runtime(data_dir, port, {"OFFLINE_MODEL_LATENCY_MS": "80"})
        headers = {"X-API-Key": os.environ.get("AGENT_API_KEY", DEV_API_KEY)}
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as client:
                wait_healthy(client, proc)
                console.print("ingesting samples/ through POST /api/documents")
                ingest(client)
                for question in QUESTIONS:
                    run_job(client, question)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            console.print("runtime stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
