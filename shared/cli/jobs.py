"""agentctl queue / dlq / jobs: the runbook's "jobs not completing" and "queue backlog" procedures.

Operators see every tenant's jobs (the API shows a caller its own tenant only).
"""

from __future__ import annotations

from typing import Annotated, Any, cast, get_args

import typer

from shared.cli.context import backends
from shared.cli.output import CliError, JsonOpt, emit, fields, table
from shared.contracts import Job, JobStatus

queue_app = typer.Typer(help="The step queue: active, scheduled and dead-lettered messages.", no_args_is_help=True)
dlq_app = typer.Typer(help="The dead-letter sub-queue: inspect, re-submit, purge.", no_args_is_help=True)
jobs_app = typer.Typer(help="Jobs of every tenant: list, inspect, cancel, re-run, re-submit.", no_args_is_help=True)

STATUSES = get_args(JobStatus)


# --- queue --------------------------------------------------------------------------------------------


@queue_app.command("status")
def queue_status(as_json: JsonOpt = False) -> None:
    """Message counts of the step queue (the runbook's `az servicebus queue show --query countDetails`)."""
    from shared.services import operations

    status = operations.queue_status(backends())

    def render(data: dict[str, Any]) -> None:
        table("queue", ["field", "value"], [[k, v] for k, v in data.items()])

    emit(status, render, as_json=as_json)


# --- dead letters -------------------------------------------------------------------------------------


def _dead_letter_rows(items: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            d["message_id"],
            d.get("job_id"),
            d.get("step"),
            d.get("job_status"),
            d["delivery_count"],
            d.get("reason"),
            d.get("cause"),
            (d.get("failure") or d.get("description") or "")[:70],
        ]
        for d in items
    ]


@dlq_app.command("list")
def dlq_list(as_json: JsonOpt = False) -> None:
    """Dead-lettered step messages, oldest first, with the reason each was dead-lettered."""
    from shared.services import operations

    items = operations.dead_letters(backends())

    def render(data: list[dict[str, Any]]) -> None:
        table(
            f"dead letters: {len(data)}",
            ["message id", "job", "step", "job status", "deliveries", "reason", "sweep will judge", "failure"],
            _dead_letter_rows(data),
        )

    emit(items, render, as_json=as_json)


@dlq_app.command("show")
def dlq_show(message_id: str, as_json: JsonOpt = False) -> None:
    """One dead-lettered message, how the sweep will judge it, and the job it belongs to."""
    from shared.services import operations

    b = backends()
    dead = operations.dead_letter(b, message_id)
    shown = {**dead.model_dump(mode="json"), "job": b.jobs.get(dead.job_id) if dead.job_id else None}

    def render(data: dict[str, Any]) -> None:
        fields(f"dead letter {message_id}")({k: v for k, v in data.items() if k != "job"})
        job = data["job"] or {}
        typer.echo(
            f"job {job.get('id')}: {job.get('status')} at step {job.get('step')}, "
            f"resubmissions {job.get('resubmissions')}; see `agentctl jobs show {job.get('id')}`"
        )

    emit(shown, render, as_json=as_json)


@dlq_app.command("resubmit")
def dlq_resubmit(message_id: str, as_json: JsonOpt = False) -> None:
    """Send a dead-lettered step again (under a new message id) and remove it from the dead-letter queue."""
    from shared.services import operations

    result = operations.resubmit_dead_letter(backends(), message_id)
    emit(result, fields(f"dead letter {message_id}"), as_json=as_json)


@dlq_app.command("purge")
def dlq_purge(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete every dead-lettered message. Their jobs stay as they are (see `agentctl jobs list`)."""
    from shared.services import operations

    b = backends()
    if not yes:
        if as_json:
            raise CliError("purge needs confirmation", "add --yes to purge without a prompt", kind="confirm")
        count = b.queue.counts().dead_lettered
        typer.confirm(f"delete {count} dead-lettered message(s)?", abort=True)
    purged = operations.purge_dead_letters(b)
    emit({"purged": purged}, lambda d: typer.echo(f"purged {d['purged']} dead-lettered message(s)"), as_json=as_json)


# --- jobs ---------------------------------------------------------------------------------------------


def _job_rows(items: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for j in items:
        usage = j.get("usage") or {}
        error = j.get("error") or {}
        rows.append(
            [
                j["id"],
                j["tenant"],
                j["status"],
                j["step"],
                usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0),
                str(j["created_at"])[:19],
                error.get("reason", ""),
            ]
        )
    return rows


@jobs_app.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option(help=f"Only jobs in this status: {', '.join(STATUSES)}.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's jobs.")] = None,
    reason: Annotated[
        str | None,
        typer.Option(
            help="Only jobs whose error reason is this, e.g. citations_missing, policy_limit, budget_exceeded."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many, newest first.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Jobs, newest first, across tenants (or one tenant's)."""
    if status is not None and status not in STATUSES:
        raise CliError(f"unknown status {status!r}", f"use one of: {', '.join(STATUSES)}", kind="invalid")
    found = _find_jobs(status, tenant, reason, limit)

    def render(data: list[dict[str, Any]]) -> None:
        table(
            f"jobs: {len(data)}",
            ["id", "tenant", "status", "step", "tokens", "created (UTC)", "error"],
            _job_rows(data),
        )

    emit(found, render, as_json=as_json)


def _find_jobs(status: str | None, tenant: str | None, reason: str | None, limit: int) -> list[Job]:
    from shared.services import operations

    # jobs_list checked status against STATUSES already.
    return operations.list_jobs(
        backends(), status=cast(JobStatus | None, status), tenant=tenant, reason=reason, limit=limit
    ).jobs


def _job(job_id: str) -> Job:
    job = backends().jobs.get(job_id)
    if job is None:
        raise CliError(
            f"no job {job_id}",
            "list jobs with `agentctl jobs list` (is --data-dir / the Azure "
            "storage setting pointing at the right environment?)",
            kind="not-found",
            exit_code=2,
        )
    return job


@jobs_app.command("show")
def jobs_show(job_id: str, as_json: JsonOpt = False) -> None:
    """A job's record, its committed checkpoints, and whether its report exists."""
    b = backends()
    job = _job(job_id)
    report = b.reports.get(job_id)
    shown = {
        "job": job,
        "checkpoints": b.checkpoints.steps(job_id),
        "has_report": report is not None,
        # What the runbook's "missing citations" case looks at: kept vs removed citations.
        "citations": len(report.citations) if report else None,
        "removed_citations": report.removed_citations if report else [],
        # A deep job's tree: each sub-question's job, as the parent waits for and then reports them.
        "children": [
            {
                "id": c.id,
                "status": c.status,
                "step": c.step,
                "tokens": c.usage.total_tokens,
                "reason": c.error.reason if c.error else None,
                "task": c.task,
            }
            for c in (b.jobs.get(i) for i in job.children)
            if c is not None
        ],
    }

    def render(data: dict[str, Any]) -> None:
        j = data["job"]
        parked = j["status"] == "waiting_for_approval" and j.get("approvals")
        waiting = j["approvals"][-1]["pending"] if parked else None
        fields = [
            ["id", j["id"]],
            ["tenant", j["tenant"]],
            ["status", j["status"]],
            ["step", j["step"]],
            ["task", j["task"][:100]],
            ["usage", j["usage"]],
            ["error", j.get("error")],
            ["dead letter", j.get("dead_letter")],
            ["resubmissions", j.get("resubmissions")],
            ["cancel requested", j.get("cancel_requested")],
            ["waiting for", waiting],
            ["callback", j.get("callback_url")],
            ["parent", j.get("parent_id")],
            ["created", j["created_at"]],
            ["finished", j.get("finished_at")],
            ["checkpoints", data["checkpoints"]],
            ["report", data["has_report"]],
            ["citations", data["citations"]],
            ["removed citations", len(data["removed_citations"])],
        ]
        table(f"job {j['id']}", ["field", "value"], fields)
        table(
            "progress",
            ["step", "kind", "tokens", "ms", "summary"],
            [[p["step"], p["kind"], p["tokens"], p["duration_ms"], p["summary"][:80]] for p in j["progress"]],
        )
        if data["children"]:
            table(
                "sub-questions (deep mode)",
                ["job", "status", "step", "tokens", "reason", "sub-question"],
                [
                    [c["id"], c["status"], c["step"], c["tokens"], c["reason"] or "", c["task"][:80]]
                    for c in data["children"]
                ],
            )

    emit(shown, render, as_json=as_json)


@jobs_app.command("provenance")
def jobs_provenance(job_id: str, as_json: JsonOpt = False) -> None:
    """What produced a finished job's report: model, prompt version, policy, documents read, citation checks, costs."""
    from shared.services import jobs

    record = jobs.provenance_of(backends(), _job(job_id)).model_dump(mode="json")

    def render(data: dict[str, Any]) -> None:
        usage = data["usage"]
        table(
            f"provenance of {data['job_id']}",
            ["field", "value"],
            [
                ["status", data["status"]],
                ["model", data["model"]],
                ["deployment", data["deployment"]],
                ["prompt version", data["prompt_version"]],
                ["language", data["language"]],
                ["policy", data["policy"]],
                ["tokens", f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion"],
                ["chunks read", data["chunks_read"]],
                ["run ms", data["timings"]["run_ms"]],
            ],
        )
        table(
            "documents read",
            ["doc_id", "versions", "chunks"],
            [[d["doc_id"], ", ".join(str(v) for v in d["versions"]), d["chunks"]] for d in data["documents"]],
        )
        table(
            "citations",
            ["n", "doc_id", "chunk", "version", "page", "section", "outcome", "why"],
            [
                [c["n"], c["doc_id"], c["chunk_id"], c["version"], c["page"], c["section"], c["outcome"], c["why"]]
                for c in data["citations"]
            ],
        )
        table(
            "steps",
            ["step", "kind", "prompt", "completion", "ms"],
            [
                [s["step"], s["kind"], s["prompt_tokens"], s["completion_tokens"], s["duration_ms"]]
                for s in data["steps"]
            ],
        )

    emit(record, render, as_json=as_json)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, as_json: JsonOpt = False) -> None:
    """Ask a job to stop; it ends as cancelled at its next step boundary."""
    from shared.services import jobs

    job = jobs.cancel(backends(), _job(job_id).tenant, job_id)
    emit(job, lambda d: typer.echo(f"cancel requested for {d['id']} ({d['status']})"), as_json=as_json)


@jobs_app.command("rerun")
def jobs_rerun(job_id: str, as_json: JsonOpt = False) -> None:
    """Run the job's task again as a new job (same tenant, task, session and policy)."""
    from shared.services import operations

    new = operations.rerun_job(backends(), _job(job_id).id)
    emit(new, lambda d: typer.echo(f"re-run of {job_id} submitted as {d['id']} ({d['status']})"), as_json=as_json)


@jobs_app.command("resubmit")
def jobs_resubmit(job_id: str, as_json: JsonOpt = False) -> None:
    """Continue a stuck or dead-lettered job from its last checkpoint (a new message for its next step)."""
    from shared.services import operations

    result = operations.resubmit_job(backends(), _job(job_id).id)
    emit(result, fields(f"job {job_id} re-submitted"), as_json=as_json)


@jobs_app.command("stuck")
def jobs_stuck(
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Also act as the stuck_jobs timer does: re-send each stuck job's next step (or fail the job "
            "past STUCK_MAX_REPAIRS).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Unfinished jobs that are not on their way: no message for their next step, dead-lettered, or unreadable."""
    from shared.maintenance import stuck

    report = stuck.find_and_repair(backends(), repair=repair)

    def render(data: dict[str, Any]) -> None:
        counts = ", ".join(f"{k} {v}" for k, v in report.counts().items())
        table(
            f"stuck jobs: {counts}" + ("" if data["complete_view"] else " (queue too long to see every message)"),
            ["job", "tenant", "status", "next step", "idle s", "state", "reason"],
            [
                [j["job_id"], j.get("tenant"), j.get("status"), j.get("next_step"), j.get("idle_seconds"), j["state"]]
                + [(j.get("reason") or "")[:90]]
                for j in data["jobs"]
            ],
        )

    emit(report, render, as_json=as_json)
