"""Jobs: the filterable table, one job's page (live progress, steps, the report, actions), a cited passage."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, get_args

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import Response

from shared.console import pages, rendering, session
from shared.console.access import BackendsDep
from shared.console.pages import SessionDep
from shared.contracts import Job, JobStatus
from shared.engine.backends import Backends
from shared.errors import NotFound
from shared.services import job_search, jobs, operations

router = APIRouter()
PAGE = 50
STATUSES = get_args(JobStatus)
_JOB_ID = re.compile(r"[A-Za-z0-9_\-]{1,100}")


def _when(value: str | None) -> datetime | None:
    """A datetime-local field (browser local time without zone) read as UTC, as the table shows times."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@router.get("/jobs")
def job_table(
    request: Request,
    s: SessionDep,
    b: BackendsDep,
    status: Annotated[str, Query(max_length=20)] = "",
    tenant: Annotated[str, Query(max_length=100)] = "",
    reason: Annotated[str, Query(max_length=100)] = "",
    text: Annotated[str, Query(max_length=200)] = "",
    since: Annotated[str, Query(alias="from", max_length=30)] = "",
    until: Annotated[str, Query(alias="to", max_length=30)] = "",
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    scope = pages.tenant_scope(pages.caller_of(s))
    result = job_search.find_jobs(
        b,
        tenant=scope if scope is not None else (tenant.strip() or None),
        status=status if status in STATUSES else None,  # type: ignore[arg-type]
        reason=reason.strip() or None,
        text=text.strip() or None,
        since=_when(since),
        until=_when(until),
        limit=PAGE,
        cursor=cursor,
    )
    filters = {"status": status, "tenant": tenant, "reason": reason, "text": text, "from": since, "to": until}
    return pages.render(
        request, "jobs.html", s, result=result, filters=filters, statuses=STATUSES, query=_query(filters)
    )


def _query(filters: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in filters.items() if v}


def job_context(b: Backends, job: Job) -> dict[str, Any]:
    report_html, report = None, None
    if job.finished:
        report = b.reports.get(job.id)
        if report is not None:
            report_html = rendering.report_html(
                report.markdown, report.citations, f"/console/jobs/{job.id}/citations/{{n}}"
            )
    return {"job": job, "report": report, "report_html": report_html}


def _job(b: Backends, s: session.Session, job_id: str) -> Job:
    return pages.visible_job(pages.caller_of(s), b.jobs.get(job_id) if _JOB_ID.fullmatch(job_id) else None, job_id)


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str, s: SessionDep, b: BackendsDep, done: str | None = None) -> Response:
    return pages.render(request, "job.html", s, done=done, **job_context(b, _job(b, s, job_id)))


@router.get("/jobs/{job_id}/live")
def job_live(request: Request, job_id: str, s: SessionDep, b: BackendsDep) -> Response:
    return pages.render(request, "job_live.html", s, **job_context(b, _job(b, s, job_id)))


class CitationNotFound(NotFound):
    fix = "open the job's report and follow one of its numbered sources"


@router.get("/jobs/{job_id}/citations/{n}")
def citation(request: Request, job_id: str, n: int, s: SessionDep, b: BackendsDep) -> Response:
    job = _job(b, s, job_id)
    report = b.reports.get(job.id) if job.finished else None
    cited = next((c for c in report.citations if c.n == n), None) if report else None
    if cited is None:
        raise CitationNotFound(f"job {job.id} has no source [{n}]")
    chunks = b.index.get_chunks(cited.doc_id, cited.chunk_id)
    text = chunks[0].content if chunks else cited.quote  # the document may have been removed since
    before, quoted, after = rendering.highlighted_passage(text, cited)
    return pages.render(
        request,
        "citation.html",
        s,
        job=job,
        citation=cited,
        before=before,
        quoted=quoted,
        after=after,
        chunk_found=bool(chunks),
    )


@router.post("/jobs/{job_id}/{action}")
def job_action(
    request: Request, job_id: str, action: str, s: SessionDep, b: BackendsDep, csrf: Annotated[str, Form()] = ""
) -> Response:
    session.check_csrf(s, csrf)
    job = _job(b, s, job_id)
    if action == "cancel":
        jobs.cancel(b, job.tenant, job.id)
        return pages.see_other(f"/console/jobs/{job.id}?done=cancel")
    if action == "rerun":
        new = operations.rerun_job(b, job.id)
        return pages.see_other(f"/console/jobs/{new.id}?done=rerun")
    if action == "resubmit":
        operations.resubmit_job(b, job.id)
        return pages.see_other(f"/console/jobs/{job.id}?done=resubmit")
    raise NotFound(f"no action {action}")
