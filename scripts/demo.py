"""`make demo`: start the embedded runtime, ingest samples/, ask questions over REST, follow each job's
progress events as they happen (Server-Sent Events), print cited reports.

Everything goes through the public REST API, as a real caller would do it. The runtime's state and
log stay in .data/demo/ (cleared at the next run) so a failure can be looked at after the demo exits.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape
from rich.panel import Panel

from shared.cli.output import CliError
from shared.cli.watch import TERMINAL, describe, follow_sse
from shared.settings import DEV_API_KEY, Settings, get_settings

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = ROOT / ".data" / "demo"
DEEP_QUESTION = "How do backups, the dead-letter sweep and the step engine keep work safe?"
QUESTIONS = [
    "What happens when a step is delivered twice or a worker crashes, and how are dead-lettered messages handled?",
    "バックアップの復元手順と、検証が一致しない場合の扱いは？",
]
JOB_TIMEOUT_SECONDS = 120
# On a terminal, rich formatting; piped (a file, CI), plain lines that are never wrapped.
console = Console()
if not console.is_terminal:
    console = Console(soft_wrap=True, highlight=False)


class DemoFailed(Exception):
    pass


def shown(path: Path) -> str:
    """A path as the user can type it from where they are."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def python_cmd() -> str:
    exe = Path(sys.executable)
    return shown(exe) if exe.is_relative_to(Path.cwd()) else "python"


def describe_model(settings: Settings) -> list[str]:
    """Which model the runtime will use, decided as shared.bootstrap.build_model decides it."""
    if settings.azure_openai_endpoint and settings.azure_openai_deployment:
        return [
            f"model: Azure OpenAI deployment {settings.azure_openai_deployment} "
            f"at {settings.azure_openai_endpoint} (see docs/models.md)"
        ]
    if settings.openai_base_url or settings.openai_api_key or settings.openai_model:
        where = settings.openai_base_url or "the OpenAI API"
        return [f"model: {settings.openai_model or '(OPENAI_MODEL not set)'} at {where} (see docs/models.md)"]
    if settings.app_env == "production":
        return [
            "model: none configured, and APP_ENV=production never falls back to the offline model; see docs/models.md"
        ]
    lines = [
        "model: the offline extractive model (no network, no LLM: answers quote the retrieved text)",
        "  for a real model set AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_DEPLOYMENT, or OPENAI_BASE_URL "
        "and OPENAI_MODEL; see docs/models.md",
    ]
    if settings.offline_model_latency_ms > 0:
        lines.append(
            f"  simulated model latency: {settings.offline_model_latency_ms:g} ms per turn (OFFLINE_MODEL_LATENCY_MS)"
        )
    return lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_runtime(data_dir: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATA_DIR": str(data_dir)}
    log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the child
    return subprocess.Popen(
        [sys.executable, "-m", "shared.runtime", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def last_line(log_path: Path) -> str:
    lines = [li for li in log_path.read_text(errors="replace").splitlines() if li.strip()] if log_path.exists() else []
    return f": {lines[-1].strip()}" if lines else ""


def wait_healthy(client: httpx.Client, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoFailed(
                f"the runtime exited with code {proc.returncode} before it was healthy{last_line(log_path)}"
            )
        try:
            if client.get("/api/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise DemoFailed(f"the runtime was not healthy within {timeout:g} s")


def ingest(client: httpx.Client) -> None:
    for path in sorted((ROOT / "samples").glob("*.md")):
        r = client.post(
            "/api/documents",
            # The stem as the id ("step-engine"): what eval/questions.jsonl names in expected_docs.
            params={"filename": path.name, "doc_id": path.stem.replace(".", "-")},
            content=path.read_bytes(),
            headers={"Content-Type": "text/markdown"},
        )
        r.raise_for_status()
        for doc in r.json()["indexed"]:
            console.print(f"  indexed [bold]{escape(doc['id'])}[/] ({doc['chunks']} chunks)")


def heading(text: str) -> None:
    if console.is_terminal:
        console.rule()
        console.print(f"[bold]{escape(text)}")  # not in the rule, which cuts long text to one line
    else:
        console.print(f"\n== {escape(text)}")


def show_report(markdown: str) -> None:
    if console.is_terminal:
        console.print(Panel(Markdown(markdown), title="report", expand=False))
    else:
        console.print("-- report --")
        console.print(markdown.rstrip(), markup=False)
        console.print("-- end of report --")


def run_job(client: httpx.Client, question: str, policy: dict[str, Any] | None = None) -> None:
    heading(question + (" (deep research)" if policy else ""))
    r = client.post("/api/jobs", json={"task": question, **({"policy": policy} if policy else {})})
    r.raise_for_status()
    job = r.json()
    console.print(f"submitted [cyan]{job['id']}[/] -> {r.headers['Location']}")
    # Follow the job's progress events (Server-Sent Events; a dropped connection resumes after the last one).
    for event in follow_sse(client, job["id"], timeout=JOB_TIMEOUT_SECONDS):
        if event["type"] not in TERMINAL:
            console.print(describe(event))
    job = client.get(f"/api/jobs/{job['id']}").json()
    reason = f" ({escape(job['error']['reason'])})" if job.get("error") else ""
    console.print(f"status: [bold]{job['status']}[/]{reason}")
    if job.get("children"):
        show_tree(client, job)
    if job["status"] != "succeeded":
        raise DemoFailed(f"job {job['id']} {job['status']}")
    report = client.get(f"/api/jobs/{job['id']}/report", headers={"Accept": "text/markdown"})
    report.raise_for_status()
    show_report(report.text)


def show_tree(client: httpx.Client, job: dict[str, Any]) -> None:
    """A deep job and the sub-question jobs it waited for."""
    console.print(f"{escape(job['id'])} [bold]{job['status']}[/]")
    for i, child_id in enumerate(job["children"]):
        child = client.get(f"/api/jobs/{child_id}").json()
        branch = "└─" if i == len(job["children"]) - 1 else "├─"
        reason = f" ({escape(child['error']['reason'])})" if child.get("error") else ""
        tokens = child["usage"]["prompt_tokens"] + child["usage"]["completion_tokens"]
        console.print(
            f"  {branch} {escape(child_id)} [bold]{child['status']}[/]{reason}, {child['step']} steps, "
            f"{tokens} tokens: {escape(child['task'][:90])}"
        )


def next_steps() -> None:
    py = python_cmd()
    rows = [
        ("make serve", "the embedded runtime on http://127.0.0.1:7071/api (state in .data/)"),
        ("http://127.0.0.1:7071/api/docs", f"Swagger UI of that runtime (X-API-Key: {DEV_API_KEY})"),
        (f"{py} -m shared.cli --help", "the operator CLI"),
        (f"{py} -m shared.cli jobs list", "jobs of the make serve runtime"),
        (f"{py} -m shared.cli --data-dir .data/demo jobs list", "the jobs this demo just ran"),
    ]
    width = max(len(cmd) for cmd, _ in rows)
    console.print("\nnext steps:")
    for cmd, what in rows:
        console.print(f"  {escape(cmd):<{width}}  {escape(what)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where the runtime keeps its state and log (default .data/demo, cleared at start)",
    )
    parser.add_argument(
        "--deep",
        action="store_true",
        help="run one deep-research job instead (sub-questions as child jobs) and print its tree",
    )
    args = parser.parse_args(argv)
    data_dir: Path = args.data_dir or DEFAULT_DATA_DIR
    if args.data_dir is None:
        shutil.rmtree(data_dir, ignore_errors=True)  # the default is the demo's own: start clean
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "runtime.out"

    for line in describe_model(get_settings()):
        console.print(escape(line))
    port = free_port()
    console.print(f"starting the embedded runtime on 127.0.0.1:{port} (state and log in {escape(shown(data_dir))})")
    proc = start_runtime(data_dir, port, log_path)
    headers = {"X-API-Key": os.environ.get("AGENT_API_KEY", DEV_API_KEY)}
    failure: str | None = None
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as client:
            wait_healthy(client, proc, log_path)
            console.print("ingesting samples/ through POST /api/documents")
            ingest(client)
            if args.deep:
                run_job(client, DEEP_QUESTION, {"mode": "deep", "max_subquestions": 3})
            else:
                for question in QUESTIONS:
                    run_job(client, question)
    except (DemoFailed, CliError, httpx.HTTPError) as exc:
        failure = str(exc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        console.print("runtime stopped")
    if failure:
        console.print(f"[bold red]demo failed:[/] {escape(failure)}")
        console.print(f"runtime output: {escape(shown(log_path))}")
        if (data_dir / "logs" / "runtime.jsonl").exists():
            console.print(f"runtime log (JSON lines): {escape(shown(data_dir / 'logs' / 'runtime.jsonl'))}")
        return 1
    next_steps()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
