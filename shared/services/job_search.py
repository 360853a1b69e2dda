"""Operators' view of many jobs at once: a filtered, newest-first search and counts per time window.

Both walk the job markers (`tenants/{tenant}/jobs/{inverted ms}_{job_id}`), which carry the
submission time: a time window costs nothing for the jobs outside it, and a search reads job
records only until its page is full or `scan_limit` records were examined. The cost of a page
therefore stays flat however many jobs exist (engine invariant 10); a search that stops at its
scan limit says so and hands back a cursor to go on from.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

from pydantic import BaseModel, Field

from shared.contracts import TERMINAL_STATUSES, Job, JobStatus, utcnow
from shared.engine.backends import Backends

__all__ = ["JobSearch", "WindowCounts", "find_jobs", "window_counts", "SCAN_LIMIT"]

SCAN_LIMIT = 2000
ERROR_RATE_LINE = 0.05  # the runbook's error-rate alert (as in the weekly checks)


class JobSearch(BaseModel):
    jobs: list[Job]
    next_cursor: str | None = Field(None, description="Resume after this marker; absent when nothing is left.")
    examined: int = Field(description="Job records read to fill this page.")
    scan_stopped: bool = Field(False, description="The page stopped at the scan limit, not because it was full.")
    reached: datetime | None = Field(None, description="Submission time of the oldest job examined.")


def _matches(job: Job, status: JobStatus | None, reason: str | None, text: str | None) -> bool:
    if status is not None and job.status != status:
        return False
    if reason is not None and (job.error is None or job.error.reason != reason):
        return False
    return text is None or text.casefold() in job.task.casefold()


def find_jobs(
    b: Backends,
    *,
    tenant: str | None,
    status: JobStatus | None = None,
    reason: str | None = None,
    text: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
    scan_limit: int = SCAN_LIMIT,
) -> JobSearch:
    """Jobs of one tenant (or every tenant when None), newest first, that match every filter given.

    `text` is a case-insensitive substring of the task; `since`/`until` bound the submission time.
    """
    found: list[Job] = []
    examined, reached, last = 0, None, None
    for marker, job_id, created in b.jobs.markers(tenant, after=cursor):
        if until is not None and created > until:
            last = marker
            continue
        if since is not None and created < since:
            return JobSearch(jobs=found, examined=examined, reached=reached)  # older from here on
        if examined >= scan_limit:
            return JobSearch(jobs=found, next_cursor=last, examined=examined, scan_stopped=True, reached=reached)
        job = b.jobs.get(job_id)
        examined, reached, last = examined + 1, created, marker
        if job is None or not _matches(job, status, reason, text):
            continue
        found.append(job)
        if len(found) == limit:
            return JobSearch(jobs=found, next_cursor=marker, examined=examined, reached=reached)
    return JobSearch(jobs=found, examined=examined, reached=reached)


# A finished job's status and error reason never change again (a re-run is a new job), so the
# counts remember them by job id (ids are unique: time plus 64 random bits) and re-read only the
# unfinished jobs of the window: a refreshing overview costs a listing, not a day of records.
_FINISHED: dict[str, tuple[str, str | None]] = {}
_FINISHED_MAX = 200_000
_finished_lock = threading.Lock()


def _outcome(b: Backends, job_id: str) -> tuple[str, str | None] | None:
    known = _FINISHED.get(job_id)
    if known is not None:
        return known
    outcome = b.jobs.outcome(job_id)
    if outcome is None:
        return None
    if outcome[0] in TERMINAL_STATUSES:
        with _finished_lock:
            if len(_FINISHED) >= _FINISHED_MAX:
                _FINISHED.clear()
            _FINISHED[job_id] = outcome
    return outcome


class WindowCounts(BaseModel):
    window: str = Field(description="'1h' or '24h': jobs submitted in that window before now.")
    since: datetime = Field(description="Where the window starts.")
    by_status: dict[str, int]
    finished: int
    failed: int
    error_rate: float = Field(description="failed / finished among them (0 when none finished).")
    over_line: bool = Field(description="Above the runbook's 5% error-rate line.")
    failure_reasons: dict[str, int] = Field(default_factory=dict)


def window_counts(b: Backends, *, tenant: str | None, now: datetime | None = None) -> list[WindowCounts]:
    """Jobs submitted in the last hour and the last day, by their current status, with the error rate."""
    now = now or utcnow()
    windows = {"1h": now - timedelta(hours=1), "24h": now - timedelta(days=1)}
    statuses = ("queued", "running", "succeeded", "failed", "cancelled")
    tallies = {w: {s: 0 for s in statuses} for w in windows}
    reasons: dict[str, dict[str, int]] = {w: {} for w in windows}
    for _, job_id, created in b.jobs.markers(tenant):
        if created < windows["24h"]:
            break
        outcome = _outcome(b, job_id)
        if outcome is None:
            continue
        status, why = outcome
        for w, start in windows.items():
            if created >= start:
                tallies[w][status] = tallies[w].get(status, 0) + 1
                if status == "failed":
                    reasons[w][why or "unknown"] = reasons[w].get(why or "unknown", 0) + 1
    out = []
    for w in windows:
        finished = sum(tallies[w][s] for s in TERMINAL_STATUSES)
        failed = tallies[w]["failed"]
        rate = failed / finished if finished else 0.0
        out.append(
            WindowCounts(
                window=w,
                since=windows[w],
                by_status=tallies[w],
                finished=finished,
                failed=failed,
                error_rate=rate,
                over_line=rate > ERROR_RATE_LINE,
                failure_reasons=dict(sorted(reasons[w].items(), key=lambda kv: (-kv[1], kv[0]))),
            )
        )
    return out
