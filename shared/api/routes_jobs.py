"""/api/jobs: submit research jobs, follow them, cancel them, read their reports."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from agents.markdown_text import safe_autolink
from agents.report_markdown import inline_text
from shared.api.deps import BackendsDep
from shared.api.schema import problem_responses
from shared.api.security import CallerDep
from shared.contracts import Citation, Job, JobError, JobStatus
from shared.engine.backends import Backends
from shared.engine.pricing import Cost, price_usage
from shared.engine.provenance import Provenance
from shared.services import approvals, jobs

router = APIRouter(prefix="/api/jobs", tags=["jobs"])


class ReportView(BaseModel):
    job_id: str
    status: JobStatus
    markdown: str
    citations: list[Citation]
    language: str
    model: str
    offline_model: bool
    removed_citations: list[dict[str, Any]] = Field(default_factory=list)
    safety: dict[str, int] = Field(
        default_factory=dict, description="What delivery took out of the model's Markdown or marked, by kind."
    )
    error: JobError | None = None


class JobView(Job):
    cost: Cost | None = Field(
        None, description="This job's tokens at the deployed model's price (MODEL_PRICES); null when unpriced."
    )


def json_response(model: BaseModel, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """The model as JSON, serialised once by pydantic: FastAPI would validate it against the response model
    again and encode it through its generic path. The declared response_model still documents it."""
    return Response(model.model_dump_json().encode(), status_code, headers, media_type="application/json")


@router.post("", status_code=202, response_model=Job, summary="Submit a research job", responses=problem_responses(409))
def submit_job(
    body: jobs.JobRequest,
    caller: CallerDep,
    b: BackendsDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Response:
    job, created = jobs.submit(b, caller.tenant, body, idempotency_key)
    headers = {"Location": f"{router.prefix}/{job.id}"}  # get_job's path; a relative Location, never from Host
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return json_response(job, 202, headers)


@router.get("", response_model=jobs.JobPage, summary="The caller's jobs, newest first")
def list_jobs(
    caller: CallerDep,
    b: BackendsDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> jobs.JobPage:
    return jobs.list_jobs(b, caller.tenant, status=status, limit=limit, cursor=cursor)


@router.get("/{job_id}", response_model=JobView, summary="Status, progress per step, usage and cost, error")
async def get_job(job_id: str, caller: CallerDep, b: BackendsDep) -> Response:
    # On the embedded store the read costs less than the hop to the thread pool and back; a network
    # store's read would hold the event loop, so it goes to the thread pool as a sync route would.
    if b.objects.local_reads:
        return job_view(b, caller.tenant, job_id)
    return await run_in_threadpool(job_view, b, caller.tenant, job_id)


def job_view(b: Backends, tenant: str, job_id: str) -> Response:
    job = jobs.get(b, tenant, job_id)
    # The record was validated when read: construct the view from its fields rather than validate them again.
    return json_response(JobView.model_construct(**dict(job), cost=price_usage(b, job.usage)))


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=Job,
    summary="Cancel at the next step boundary",
    responses=problem_responses(409),
)
def cancel_job(job_id: str, caller: CallerDep, b: BackendsDep) -> Job:
    return jobs.cancel(b, caller.tenant, job_id)


@router.post(
    "/{job_id}/approve",
    response_model=Job,
    summary="Approve what a waiting job waits for; it resumes with exactly one next step",
    description="Idempotent: repeating the request (or sending it concurrently) resumes the job once. "
    "409 when the job is not waiting (timed out, cancelled) or was rejected.",
    responses=problem_responses(409),
)
def approve_job(job_id: str, caller: CallerDep, b: BackendsDep, body: approvals.Decision | None = None) -> Job:
    body = body or approvals.Decision()
    return approvals.decide(b, caller.tenant, job_id, "approved", body.comment, caller.key_id, body.after_step)


@router.post(
    "/{job_id}/reject",
    response_model=Job,
    summary="Reject what a waiting job waits for; the agent is told (with the comment) and goes on without it",
    responses=problem_responses(409),
)
def reject_job(job_id: str, caller: CallerDep, b: BackendsDep, body: approvals.Decision | None = None) -> Job:
    body = body or approvals.Decision()
    return approvals.decide(b, caller.tenant, job_id, "rejected", body.comment, caller.key_id, body.after_step)


@router.get(
    "/{job_id}/provenance",
    response_model=Provenance,
    summary="What produced the report: model, prompt version, policy, document versions read, checks, costs",
    responses=problem_responses(409),
)
def get_provenance(job_id: str, caller: CallerDep, b: BackendsDep) -> Provenance:
    return jobs.job_provenance(b, caller.tenant, job_id)


@router.get(
    "/{job_id}/report",
    response_model=ReportView,
    summary="The cited report (Markdown with Accept: text/markdown)",
    responses={200: {"content": {"text/markdown": {}}}, **problem_responses(409)},
)
def get_report(job_id: str, caller: CallerDep, b: BackendsDep, accept: Annotated[str, Header()] = "application/json"):  # type: ignore[no-untyped-def]
    job, report = jobs.report(b, caller.tenant, job_id)
    if "text/markdown" in accept:
        return PlainTextResponse(render_markdown(report), media_type="text/markdown; charset=utf-8")
    return ReportView(job_id=job.id, status=job.status, error=job.error, **report.model_dump())


def render_markdown(report) -> str:  # type: ignore[no-untyped-def]
    """The report followed by its numbered sources, each with the quoted text."""
    heading = "出典" if report.language == "ja" else "Sources"
    lines = [report.markdown.rstrip(), "", f"## {heading}", ""]
    for c in report.citations:
        # Titles, URLs and quotes come from documents: shown as text, a URL only as an http(s) autolink.
        where = f" {link}" if (link := safe_autolink(c.url)) else ""
        title, quote = inline_text(c.title), inline_text(c.quote)
        lines.append(f"- [{c.n}] {title} ({c.doc_id}#{c.chunk_id}){where}: \u201c{quote}\u201d")
    if report.offline_model:
        lines += ["", "_Written by the offline extractive model._"]
    return "\n".join(lines) + "\n"
