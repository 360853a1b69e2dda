"""Jobs: the filterable table, one job's page (live progress, steps, the report, actions), a cited passage."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from shared.console import pages, rendering, session
from shared.console.access import BackendsDep
from shared.console.pages import SessionDep
from shared.contracts import Job, JobStatus, knowledge_scopes
from shared.engine import provenance, watch
from shared.engine.backends import Backends
from shared.engine.pricing import price_usage
from shared.errors import NotFound
from shared.services import approvals, events, job_search, jobs, operations

router = APIRouter()
PAGE = 50
STATUSES = get_args(JobStatus)
_JOB_ID = re.compile(r"[A-Za-z0-9_\-]{1,100}")
MAX_WAIT_SECONDS = 25.0  # under the usual 30 s proxy idle timeout; the page asks again at once
DECISIONS: dict[str, Literal["approved", "rejected"]] = {"approve": "approved", "reject": "rejected"}


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
    return {
        "job": job,
        # Written once when the job ends; absent for jobs that ended before provenance existed.
        "provenance": provenance.load(b.objects, job.id) if job.finished else None,
        "report": report,
        "report_html": report_html,
        "cost": price_usage(b, job.usage),
        "pending": job.pending_approval if job.status == "waiting_for_approval" else None,
    }


def _job(b: Backends, s: session.Session, job_id: str) -> Job:
    return pages.visible_job(pages.caller_of(s), b.jobs.get(job_id) if _JOB_ID.fullmatch(job_id) else None, job_id)


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str, s: SessionDep, b: BackendsDep, done: str | None = None) -> Response:
    return pages.render(request, "job.html", s, done=done, **job_context(b, _job(b, s, job_id)))


@router.get("/jobs/{job_id}/live")
def job_live(request: Request, job_id: str, s: SessionDep, b: BackendsDep) -> Response:
    return pages.render(request, "job_live.html", s, **job_context(b, _job(b, s, job_id)))


@router.get("/jobs/{job_id}/events")
async def job_events(
    job_id: str,
    s: SessionDep,
    b: BackendsDep,
    after: Annotated[int, Query(ge=0)] = 0,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS)] = 0,
) -> Response:
    """The job's durable events after `after` as the API's JSON page, long-polled up to `wait` seconds.

    The page's script follows this with the session cookie (an EventSource or fetch cannot send an
    API key, and the key never reaches the browser); the tenant is the job's, once the session may see it.
    """
    job = await run_in_threadpool(_job, b, s, job_id)
    found = await _long_poll(b, job.tenant, job.id, after, wait)
    return JSONResponse(found.model_dump(mode="json"))


async def _long_poll(b: Backends, tenant: str, job_id: str, after: int, wait: float) -> events.EventPage:
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()

    def wake() -> None:  # called from the writer's thread
        loop.call_soon_threadsafe(woken.set)

    with watch.listen(job_id, wake):
        deadline = time.monotonic() + wait
        while True:
            found = await run_in_threadpool(events.page, b, tenant, job_id, after)
            left = deadline - time.monotonic()
            if found.events or found.ended or left <= 0:
                return found
            # Woken at once by a write in this process; another process's write is seen at the next poll.
            try:
                await asyncio.wait_for(woken.wait(), min(b.settings.events_poll_seconds, left))
            except TimeoutError:
                pass
            woken.clear()


class CitationNotFound(NotFound):
    fix = "open the job's report and follow one of its numbered sources"


@router.get("/jobs/{job_id}/citations/{n}")
def citation(request: Request, job_id: str, n: int, s: SessionDep, b: BackendsDep) -> Response:
    job = _job(b, s, job_id)
    report = b.reports.get(job.id) if job.finished else None
    cited = next((c for c in report.citations if c.n == n), None) if report else None
    if cited is None:
        raise CitationNotFound(f"job {job.id} has no source [{n}]")
    chunks = b.index.get_chunks(cited.doc_id, cited.chunk_id, scopes=knowledge_scopes(job.tenant))
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


@router.post("/jobs/{job_id}/decide")
def decide(
    request: Request,
    job_id: str,
    s: SessionDep,
    b: BackendsDep,
    csrf: Annotated[str, Form()] = "",
    decision: Annotated[str, Form(max_length=10)] = "",
    after_step: Annotated[int, Form(ge=1)] = 1,
    comment: Annotated[str, Form(max_length=2000)] = "",
    confirmed: Annotated[str, Form(max_length=3)] = "",
) -> Response:
    """Approve or reject the approval after `after_step` (never a later one), as the API's decide does.

    The job page's form lands on a confirmation naming the job, the step and the comment (a POST, so
    the comment stays out of URLs and logs); only that page's `confirmed=yes` decides.
    """
    session.check_csrf(s, csrf)
    if decision not in DECISIONS:
        raise NotFound(f"no decision {decision}")
    job = _job(b, s, job_id)
    if confirmed != "yes":
        return pages.render(
            request, "job_decide.html", s, job=job, decision=decision, after_step=after_step, comment=comment
        )
    caller = pages.caller_of(s)
    approvals.decide(
        b, job.tenant, job.id, DECISIONS[decision], comment.strip() or None, f"console:{caller.key_id}", after_step
    )
    return pages.see_other(f"/console/jobs/{job.id}?done={decision}")


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
