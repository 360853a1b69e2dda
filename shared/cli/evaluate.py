"""agentctl eval: run a question set as jobs over the REST API and score the reports (shared/services/evaluation).

    agentctl eval eval/questions.jsonl                                  # the embedded runtime (make serve)
    agentctl eval q.jsonl --url https://agent-api-prd.azurewebsites.net --key "$KEY" --baseline eval/baseline.json

Every question is submitted first, so the jobs run side by side on the queue as real traffic would;
then each is followed to its end, its report read, and every cited chunk fetched to check the quote.
The API is the only way in, so a deployed app is measured exactly like the embedded runtime.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from shared.cli.output import CliError, JsonOpt, emit, progress
from shared.services import evaluation
from shared.services.evaluation import EvalQuestion, EvalRun, QuestionResult
from shared.settings import DEV_API_KEY

DEFAULT_URL = "http://127.0.0.1:7071"
FINISHED = ("succeeded", "failed", "cancelled")


def run_eval(
    client: httpx.Client,
    questions: list[EvalQuestion],
    *,
    target: str,
    timeout: float = 300.0,
    poll_seconds: float = 0.2,
    on_progress: Any = None,
) -> EvalRun:
    """Submit every question, wait for each job, score it. client carries the base URL and the API key."""
    deadline = time.monotonic() + timeout
    submitted: list[tuple[EvalQuestion, str | None, str | None]] = []
    for spec in questions:
        r = _call(client, "POST", "/api/jobs", deadline, json={"task": spec.question})
        if r.status_code != 202:
            submitted.append((spec, None, f"submit answered {r.status_code}: {_problem(r)}"))
            continue
        submitted.append((spec, r.json()["id"], None))
    chunks: dict[tuple[str, int], str | None] = {}

    def chunk_text(doc_id: str, chunk_id: int) -> str | None:
        if (doc_id, chunk_id) not in chunks:
            r = _call(client, "GET", f"/api/documents/{doc_id}/chunks/{chunk_id}", deadline)
            chunks[(doc_id, chunk_id)] = r.json()["content"] if r.status_code == 200 else None
        return chunks[(doc_id, chunk_id)]

    results: list[QuestionResult] = []
    models: set[str] = set()
    for done, (spec, job_id, error) in enumerate(submitted):
        if on_progress:
            on_progress(done, len(submitted), spec.question[:40])
        if job_id is None:
            results.append(evaluation.score(spec, None, None, chunk_text, error=error))
            continue
        job = _wait(client, job_id, deadline, poll_seconds)
        if job is None:
            results.append(evaluation.score(spec, {"id": job_id, "status": "timed_out"}, None, chunk_text))
            continue
        r = _call(client, "GET", f"/api/jobs/{job_id}/report", deadline)
        report = r.json() if r.status_code == 200 else None
        if report and report.get("model"):
            models.add(str(report["model"]))
        results.append(evaluation.score(spec, job, report, chunk_text, latency_seconds=_latency(job)))
    if on_progress:
        on_progress(len(submitted), len(submitted), "done")
    return EvalRun(
        target=target,
        model=", ".join(sorted(models)) or None,
        summary=evaluation.summarize(results),
        results=results,
    )


def _call(client: httpx.Client, method: str, url: str, deadline: float, **kwargs: Any) -> httpx.Response:
    """One API call, waiting out a 429 of the API's per-key rate limit as its Retry-After asks, until deadline.

    A 429 without Retry-After (a spent budget) is returned at once: waiting would not help.
    """
    while True:
        r = client.request(method, url, **kwargs)
        if r.status_code != 429 or "retry-after" not in r.headers or time.monotonic() > deadline:
            return r
        try:
            wait = float(r.headers["retry-after"])
        except ValueError:
            wait = 1.0
        time.sleep(min(max(wait, 0.1), max(0.0, deadline - time.monotonic()) + 0.1))


def _wait(client: httpx.Client, job_id: str, deadline: float, poll_seconds: float) -> dict[str, Any] | None:
    while True:
        r = _call(client, "GET", f"/api/jobs/{job_id}", deadline)
        if r.status_code == 200 and r.json()["status"] in FINISHED:
            return dict(r.json())
        if time.monotonic() > deadline:
            return None
        time.sleep(poll_seconds)


def _latency(job: dict[str, Any]) -> float:
    """Submit to end as the service recorded them, so polling cadence does not blur the figure."""
    try:
        created = datetime.fromisoformat(str(job["created_at"]))
        finished = datetime.fromisoformat(str(job["finished_at"]))
    except (KeyError, TypeError, ValueError):
        return 0.0
    return max(0.0, (finished - created).total_seconds())


def _problem(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:200]
    return str(body.get("detail") or body.get("title") or body)[:200]


def load_baseline(path: Path) -> evaluation.Summary:
    """The summary of an earlier run (the JSON this command writes), or a bare summary object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CliError(
            f"cannot read baseline {path}: {exc}", "pass the JSON file an earlier `agentctl eval --out` wrote"
        ) from None
    return evaluation.Summary.model_validate(data.get("summary", data))


def evaluate(
    questions_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSON lines: question, ...")],
    url: Annotated[str, typer.Option(help="The API's base URL; the embedded runtime by default.")] = DEFAULT_URL,
    key: Annotated[
        str | None, typer.Option(help="API key (default: AGENT_API_KEY, else the embedded runtime's dev key).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the run as JSON here (a later run's --baseline).")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Write the run as Markdown here.")] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Compare with this earlier run; exit 1 on a regression."),
    ] = None,
    margin: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="A quality figure may drop this much (absolute) before it counts.")
    ] = evaluation.DEFAULT_MARGIN,
    timeout: Annotated[float, typer.Option(min=1.0, help="Seconds to wait for all jobs to end.")] = 600.0,
    as_json: JsonOpt = False,
) -> None:
    """Run a question set as jobs and measure answer quality: citations, support, language, latency, tokens, cost."""
    questions = evaluation.parse_questions(questions_file.read_text(encoding="utf-8").splitlines())
    api_key = key or os.environ.get("AGENT_API_KEY") or DEV_API_KEY
    with (
        httpx.Client(base_url=url, headers={"X-API-Key": api_key}, timeout=30) as client,
        progress("questions", as_json=as_json) as tick,
    ):
        try:
            client.get("/api/health").raise_for_status()
        except httpx.HTTPError as exc:
            raise CliError(
                f"the API at {url} is not reachable ({exc})",
                "start the embedded runtime (`make serve`) or pass --url and --key of a deployed app",
            ) from None
        run = run_eval(client, questions, target=url, timeout=timeout, on_progress=tick)
    found = evaluation.regressions(run.summary, load_baseline(baseline), margin) if baseline else None
    if out:
        out.write_text(run.model_dump_json(indent=2) + "\n", encoding="utf-8")
    page = evaluation.render_markdown(run, found)
    if markdown:
        markdown.write_text(page, encoding="utf-8")
    result: dict[str, Any] = run.model_dump(mode="json")
    if found is not None:
        result["regressions"] = [g.model_dump() for g in found]
    emit(result, lambda _: typer.echo(page), as_json=as_json)
    if found:
        raise typer.Exit(1)
