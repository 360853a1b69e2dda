"""Deep research in the engine: fan out to child jobs, park the parent, fan in when the last child ends.

A deep job's step 1 plans sub-questions (agents/deep.py) and commits a checkpoint of kind "plan"
with no outcome. Committing it parks the job: settle() enqueues no next step; it records the
children on the parent and creates them, each a job of its own whose steps run on the queue like
any other, in parallel across workers and instances. Nothing holds a worker or a lock meanwhile.

Fan-in is a check of the children's records, run after every child's final step is settled: when
all have ended, the parent's next step is sent with the usual message id "{parent}:{n+1}". Two
children ending together may both send it, a kill may make a child's settle run twice: duplicate
detection drops the copies, and if one slips through, checkpoint n+1 is create-only, so the parent
resumes exactly once. That step composes the report from the children's reports.

A child that ended out of band (the dead-letter sweep, an operator) is never settled, so it does
not trigger the check itself; the next child to end, or a redelivery of the plan step, does.
"""

from __future__ import annotations

import logging

from agents import deep
from agents.state import AgentState
from shared.contracts import Checkpoint, Job, JobError, Outcome, StepMessage, Usage, knowledge_scopes
from shared.engine import job as lifecycle
from shared.engine.backends import Backends
from shared.ports import PreconditionFailed

log = logging.getLogger("agent.steps")

PLAN_KIND = "plan"
COMPOSE_KIND = "compose"

__all__ = [
    "COMPOSE_KIND",
    "PLAN_KIND",
    "ChildrenStillRunning",
    "DeepStep",
    "is_deep_parent",
    "parks",
    "resume_if_done",
    "spawn",
    "step",
]


DeepStep = tuple[str, str, AgentState, Usage, Outcome | None]


class ChildrenStillRunning(RuntimeError):
    """The parent's resume step arrived before every child ended (a stray or re-submitted message).

    Raised, not dropped: the broker delivers the message again later, so the resume is never lost
    to duplicate detection of the message id it carries.
    """


def is_deep_parent(job: Job) -> bool:
    return job.policy.mode == "deep" and job.parent_id is None


def parks(cp: Checkpoint) -> bool:
    """Whether committing cp parks its job until its children end (no next step is enqueued)."""
    return cp.kind == PLAN_KIND and cp.outcome is None


def child_id(parent_id: str, n: int) -> str:
    return f"{parent_id}-q{n}"


def step(b: Backends, job: Job, state: AgentState, previous: Checkpoint | None) -> DeepStep | None:
    """The deep parent's step, or None when this step of the job is not a deep one.

    May raise the model's TransientModelError / PermanentModelError like any model step.
    """
    if not is_deep_parent(job):
        return None
    if previous is None:
        plan = deep.plan(job.task, job.policy, b.model, b.index, scopes=knowledge_scopes(job.tenant))
        state.subquestions = plan.subquestions
        how = "planned" if plan.planned_by_model else "no plan proposed; researching the question as asked in"
        summary = f"{how} {len(plan.subquestions)} sub-question(s); waiting for their jobs"
        return PLAN_KIND, summary, state, plan.usage, None
    if previous.kind == PLAN_KIND:
        running = [c for c in job.children if not ((child := b.jobs.get(c)) and child.finished)]
        if running:
            raise ChildrenStillRunning(f"{len(running)} sub-question job(s) still running: {', '.join(running)}")
        return _compose(b, job, state)
    return None


def spawn(b: Backends, job: Job, cp: Checkpoint) -> None:
    """Create the children the plan names and enqueue their first steps. Idempotent."""
    state = AgentState.model_validate(cp.state)
    ids = [child_id(job.id, n) for n in range(1, len(state.subquestions) + 1)]
    parent = b.jobs.update(job.id, lambda j: lifecycle.adopt_children(j, ids)) or b.jobs.get(job.id) or job
    # The tree shares the parent's token limit: what planning left, split evenly.
    share = max(1, (job.policy.max_tokens - cp.total_usage.total_tokens) // max(1, len(ids)))
    policy = job.policy.model_copy(update={"mode": "standard", "max_tokens": share})
    for child, question in zip(ids, state.subquestions, strict=True):
        record = Job(
            id=child,
            tenant=job.tenant,
            task=question,
            policy=policy,
            parent_id=job.id,
            cancel_requested=parent.cancel_requested,  # cancelled while planning: the children start cancelled
        )
        try:
            b.jobs.create(record)
        except PreconditionFailed:
            pass  # created by an earlier delivery of this settle
        first = StepMessage(job_id=child, step=1)
        b.queue.send(first.model_dump_json().encode(), message_id=first.message_id)
    log.info("job waits for %s sub-question job(s)", len(ids), extra={"event": "fanout", "children": ids})
    resume_if_done(b, job.id)  # on a redelivery the children may all have ended already


def resume_if_done(b: Backends, parent_id: str) -> bool:
    """Send the parent's next step if every child has ended; True if it was sent (maybe again)."""
    parent = b.jobs.get(parent_id)
    if parent is None or parent.finished or not parent.children:
        return False
    planned = next((p.step for p in parent.progress if p.kind == PLAN_KIND), None)
    if planned is None:
        return False
    for child in parent.children:
        record = b.jobs.get(child)
        if record is None or not record.finished:
            return False
    nxt = StepMessage(job_id=parent_id, step=planned + 1)
    b.queue.send(nxt.model_dump_json().encode(), message_id=nxt.message_id, continuation=True)
    log.info("every sub-question job ended; resuming", extra={"event": "fanin", "job_id": parent_id})
    return True


def _compose(b: Backends, job: Job, state: AgentState) -> DeepStep:
    findings: list[deep.Finding] = []
    for child_job_id, question in zip(job.children, state.subquestions, strict=False):
        child = b.jobs.get(child_job_id)
        findings.append(
            deep.Finding(
                subquestion=question,
                job_id=child_job_id,
                status=child.status if child else "missing",
                reason=child.error.reason if child and child.error else None,
                report=b.reports.get(child_job_id),
            )
        )
    state.report = deep.compose(
        state,
        findings,
        b.index,
        b.model,
        uncited=job.policy.uncited,
        link_hosts=b.settings.report_link_hosts,
        scopes=knowledge_scopes(job.tenant),
    )
    answered = sum(1 for f in findings if f.status == "succeeded")
    failed = len(findings) - answered
    summary = f"report from {answered} of {len(findings)} sub-question(s), {len(state.report.citations)} citation(s)"
    policy = job.policy
    if failed and (policy.fail_on_child_failure or not answered):
        error = JobError(reason="subquestions_failed", detail=f"{failed} of {len(findings)} sub-question job(s) failed")
        return COMPOSE_KIND, summary, state, Usage(), Outcome(status="failed", error=error)
    if policy.require_citations and len(state.report.citations) < policy.min_citations:
        error = JobError(
            reason="citations_missing",
            detail=f"{len(state.report.citations)} verified citation(s), policy requires {policy.min_citations}",
        )
        return COMPOSE_KIND, summary, state, Usage(), Outcome(status="failed", error=error)
    return COMPOSE_KIND, summary, state, Usage(), Outcome(status="succeeded")
