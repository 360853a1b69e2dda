"""The step engine: run one agent step per queue message, at least once, committed exactly once.

Invariants (ARCHITECTURE.md):
1. checkpoint n is created once (create-only); that write is the step's commit point;
2. messages carry only {job_id, step} with message_id "{job_id}:{step}";
3. the job record is a projection of the checkpoints;
4. a redelivered step whose checkpoint exists only re-does the follow-up (enqueue n+1,
   projection), which is itself idempotent;
5. transient model errors reschedule the step; permanent ones end the job; anything
   else raises, so the broker redelivers and finally dead-letters;
6. cancel is honoured at the next step boundary;
7. step n+1 is enqueued only after step n commits, so one step of a job is in flight.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from pydantic import ValidationError

from agents import research
from agents.policy import PolicyViolation
from agents.state import AgentState
from shared.contracts import (
    ApprovalRequest,
    Checkpoint,
    DeadLetterNote,
    FailureCause,
    Job,
    JobError,
    Outcome,
    StepMessage,
    Usage,
    approval_needed,
    knowledge_scopes,
    utcnow,
)
from shared.engine import fanout, outbox, provenance
from shared.engine import job as lifecycle
from shared.engine.backends import Backends
from shared.engine.ledger import BUDGET_STALENESS_SECONDS, BUDGET_WARNING_RATIO, month_of
from shared.engine.pricing import budget_exhausted
from shared.errors import CorruptRecord, DependencyUnavailable
from shared.observability import metrics
from shared.observability.logs import job_context
from shared.ports import PermanentModelError, RejectMessage, TransientModelError

log = logging.getLogger("agent.steps")
MAX_BACKOFF_SECONDS = 300.0
# A step waiting out a dependency outage retries at least this often, so it resumes within seconds
# of the dependency coming back (an outage costs no tokens; a long backoff would only add delay).
OUTAGE_MAX_BACKOFF_SECONDS = 4.0

# Dead-letter reasons of messages that can never run (RejectMessage); the sweep reports and purges them.
MALFORMED_MESSAGE = "MalformedMessage"
UNKNOWN_JOB = "UnknownJob"
STEP_NOT_NEXT = "StepNotNext"
REJECTION_REASONS = frozenset({MALFORMED_MESSAGE, UNKNOWN_JOB, STEP_NOT_NEXT})


class StepOutOfOrder(RuntimeError):
    """Step n arrived but checkpoint n-1 does not exist; raising lets the broker retry it."""


class _ConcurrencyLimit:
    """Jobs running at once in this instance (MAX_CONCURRENT_JOBS, the runbook's memory lever)."""

    def __init__(self) -> None:
        self._sem: threading.BoundedSemaphore | None = None
        self._size = 0
        self._lock = threading.Lock()

    def get(self, size: int) -> threading.BoundedSemaphore:
        with self._lock:
            if self._sem is None or self._size != size:
                self._sem, self._size = threading.BoundedSemaphore(size), size
            return self._sem


_limit = _ConcurrencyLimit()


def handle_step(b: Backends, body: bytes, delivery_count: int = 1) -> None:
    """Run the step a queue message names. Returns normally when the message may be completed.

    A message that can never run (malformed, for a job that does not exist, or for a step that is
    not its job's next one) raises RejectMessage: it is dead-lettered with that reason and no job
    changes. On the last delivery the broker allows, the job is told before the step runs (a crash
    now dead-letters it) and a failure is written on the record before the exception propagates,
    so the job always shows why its step is in the dead-letter queue.
    """
    try:
        msg = StepMessage.model_validate_json(body)
    except ValidationError as exc:
        # Retrying cannot fix a malformed message, and there is no job to fail.
        raise RejectMessage(MALFORMED_MESSAGE, f"not a step message: {exc.errors()[0]['msg']}") from None
    try:
        read = b.jobs.read(msg.job_id)
    except DependencyUnavailable as exc:
        _wait_out(b, msg, exc)
        return
    except CorruptRecord:
        # Nothing runs for a job whose record is unreadable (the stuck-job detector reports it),
        # but a step that committed just before its settle was cut short still reaches the ledger.
        _account_last_commit(b, msg.job_id)
        raise
    if read is None:
        raise RejectMessage(UNKNOWN_JOB, f"step {msg.step} of job {msg.job_id}, which does not exist")
    job, etag = read
    with job_context(job_id=job.id, step=msg.step, tenant=job.tenant):
        last_delivery = delivery_count >= b.settings.queue_max_delivery_count
        try:
            try:
                _handle(b, job, etag, msg, delivery_count if last_delivery else None)
            except DependencyUnavailable as exc:
                _wait_out(b, msg, exc)
        except RejectMessage:
            raise
        except Exception as exc:
            metrics.record_step_failure(exc)
            if last_delivery:
                _record_dead_letter(b, job.id, msg, delivery_count, exc)
            raise


def _wait_out(b: Backends, msg: StepMessage, exc: DependencyUnavailable) -> None:
    """Storage (or the queue) is down: try the step again later rather than burn its deliveries now.

    An immediate redelivery would meet the same outage, and ten of them in a second dead-letter a
    step that nothing is wrong with. The reschedule backs off like a transient model error; when
    the queue itself is down the send fails too, and the step comes back when its lock expires.
    """
    attempt = msg.attempt + 1
    delay = min(b.settings.step_retry_base_seconds * 2 ** (attempt - 1), OUTAGE_MAX_BACKOFF_SECONDS)
    _reschedule(b, msg, TransientModelError(f"dependency unavailable: {exc}", retry_after=delay))


def _note_last_delivery(b: Backends, job_id: str, msg: StepMessage, delivery_count: int) -> None:
    """Before the last allowed delivery runs: if the process dies now, the job already says why."""
    note = DeadLetterNote(
        step=msg.step,
        delivery_count=delivery_count,
        cause="lost_lock",
        description=f"step {msg.step} began its last allowed delivery ({delivery_count}); if it never "
        "finished, the worker stopped or lost its lock on every delivery",
    )
    b.jobs.update(job_id, lambda job: lifecycle.note_dead_letter(job, note))


def failure_cause(exc: BaseException) -> FailureCause:
    """What a step's failure is, judged here where it was raised, by our own and the ports' error types.

    Adapters map their SDK's errors to the ports' types, so renaming an SDK exception can never
    turn a transient failure into a permanent one. Anything unrecognised is poison: it failed
    the same way on every delivery, and another try would burn tokens for nothing.
    """
    transient = (TransientModelError, DependencyUnavailable, StepOutOfOrder, fanout.ChildrenStillRunning)
    if isinstance(exc, (*transient, TimeoutError, ConnectionError)):
        return "transient"
    if isinstance(exc, PolicyViolation):
        return "policy"
    if isinstance(exc, PermanentModelError):
        return "permanent"
    return "poison"


def _record_dead_letter(b: Backends, job_id: str, msg: StepMessage, delivery_count: int, exc: Exception) -> None:
    note = DeadLetterNote(
        step=msg.step,
        delivery_count=delivery_count,
        cause=failure_cause(exc),
        description=f"{type(exc).__name__}: {exc}"[:1000],
    )
    b.jobs.update(job_id, lambda job: lifecycle.note_dead_letter(job, note))
    log.error(
        "step %s failed on its last delivery (%s); it goes to the dead-letter queue: %s",
        msg.step,
        delivery_count,
        exc,
        extra={"event": "step_dead_lettered"},
    )


def _handle(b: Backends, job: Job, etag: str | None, msg: StepMessage, last_delivery: int | None = None) -> None:
    if msg.purpose == "approval_deadline":
        _approval_deadline(b, job, msg)
        return
    committed = b.checkpoints.get(job.id, msg.step)
    if committed is not None:
        log.info("step %s already committed; redoing follow-up only", msg.step)
        settle(b, job, committed, etag)
        return
    previous = b.checkpoints.get(job.id, msg.step - 1) if msg.step > 1 else None
    if msg.step > 1 and previous is None:
        last = max(b.checkpoints.steps(job.id), default=0)
        if msg.step > last + 1:
            # Not this job's next step (a stray or forged message): never the job's failure.
            raise RejectMessage(
                STEP_NOT_NEXT, f"step {msg.step} of job {job.id} arrived while its last committed step is {last}"
            )
        raise StepOutOfOrder(f"checkpoint {msg.step - 1} of job {job.id} is missing")
    if previous is not None and previous.outcome is not None:
        settle(b, job, previous, etag)
        return
    if previous is not None and _awaits_approval(job, previous):
        settle(b, job, previous, etag)  # parks the job (again); the step runs once a human decides
        return
    if job.finished:
        log.info("job already %s; step %s not run", job.status, msg.step)
        return
    if last_delivery is not None:
        _note_last_delivery(b, job.id, msg, last_delivery)
        etag = None  # that write changed the record's ETag: the projection reads it afresh
    sem = _limit.get(b.settings.max_concurrent_jobs)
    if not sem.acquire(timeout=0.5):
        # The instance is full: hand the step back for a moment rather than pile up work in memory.
        _reschedule(b, msg, TransientModelError("instance at MAX_CONCURRENT_JOBS", retry_after=1.0), count=False)
        return
    try:
        checkpoint = _execute(b, job, msg, previous)
    finally:
        sem.release()
    if checkpoint is None:
        return
    if not b.checkpoints.commit(checkpoint):
        log.info("step %s committed by a concurrent delivery; discarding this result", msg.step)
        checkpoint = b.checkpoints.get(job.id, msg.step) or checkpoint
    else:
        metrics.record_commit(job.tenant, job.created_at, checkpoint)  # only the winning delivery counts
        _log_tokens(job, checkpoint)
    settle(b, job, checkpoint, etag)


def _log_tokens(job: Job, cp: Checkpoint) -> None:
    """One log event per committed step that used the model, beside the agent.tokens meter.

    Logged by the delivery whose commit won, so a redelivered step never counts twice.
    """
    if cp.usage.total_tokens == 0:
        return
    log.info(
        "step %s used %s tokens",
        cp.step,
        cp.usage.total_tokens,
        extra={
            "event": "tokens",
            "tenant": job.tenant,
            "tokens": cp.usage.total_tokens,
            "prompt_tokens": cp.usage.prompt_tokens,
            "completion_tokens": cp.usage.completion_tokens,
        },
    )


def _execute(b: Backends, job: Job, msg: StepMessage, previous: Checkpoint | None) -> Checkpoint | None:
    started = time.perf_counter()
    total = previous.total_usage if previous else Usage()
    if previous is not None:
        state = AgentState.model_validate(previous.state)
    else:
        recalled = b.memory.recall(job.tenant, job.session_id) if job.session_id else []
        state = research.start(
            job.task,
            job.policy,
            recalled,
            memory_item_chars=b.settings.memory_item_prompt_chars,
            memory_total_chars=b.settings.memory_prompt_chars,
        )

    def checkpoint(kind: str, summary: str, new_state: AgentState, usage: Usage, outcome: Outcome | None) -> Checkpoint:
        return Checkpoint(
            job_id=job.id,
            step=msg.step,
            kind=kind,
            summary=summary,
            state=new_state.model_dump(mode="json"),
            usage=usage,
            total_usage=total + usage,
            outcome=outcome,
            duration_ms=(time.perf_counter() - started) * 1000,
            tenant=job.tenant,
            ledger_month=month_of(job.created_at),
        )

    stop = _boundary(b, job, msg.step, total)
    if stop is not None:
        why = stop.error.detail if stop.error else "cancelled"
        if state.report is None and state.sources:
            # Partial findings stay readable: the report lists what was read and claims nothing.
            state.report = research.partial_report(state, why, b.model)
        return checkpoint("boundary", why, state, Usage(), stop)
    ctx = research.AgentContext(
        model=b.model,
        index=b.index,
        policy=job.policy,
        count_tokens=b.count_tokens,
        context_budget=b.settings.context_budget_tokens,
        approval=_approval_after(job, msg.step - 1),
        report_link_hosts=tuple(b.settings.report_link_hosts),
        scopes=knowledge_scopes(job.tenant),
    )
    try:
        deep_step = fanout.step(b, job, state, previous)
        if deep_step is not None:
            return checkpoint(*deep_step)
        result = research.run_step(state, ctx)
    except TransientModelError as exc:
        _reschedule(b, msg, exc)
        return None
    except PermanentModelError as exc:
        error = JobError(reason=exc.reason, detail=str(exc))
        return checkpoint("model", "model refused the request", state, Usage(), Outcome(status="failed", error=error))
    return checkpoint(result.kind, result.summary, result.state, result.usage, result.outcome)


def _boundary(b: Backends, job: Job, step: int, total: Usage) -> Outcome | None:
    """Why the job must stop before this step, if it must."""
    if job.cancel_requested:
        return Outcome(status="cancelled", error=JobError(reason="cancelled", detail="cancelled by request"))
    policy = job.policy
    if step > policy.max_steps:
        return _failed("policy_limit", f"reached max_steps={policy.max_steps}; partial findings kept")
    if total.total_tokens >= policy.max_tokens:
        return _failed(
            "policy_limit", f"used {total.total_tokens} of max_tokens={policy.max_tokens}; partial findings kept"
        )
    # A second-old figure is enough here: a budget stops jobs "at the next step", not mid-flight.
    spent = budget_exhausted(b, job.tenant, max_age=BUDGET_STALENESS_SECONDS)
    if spent is not None:
        return _failed("budget_exceeded", f"tenant {job.tenant} used {spent}")
    return None


def _failed(reason: str, detail: str) -> Outcome:
    return Outcome(status="failed", error=JobError(reason=reason, detail=detail))


def _reschedule(b: Backends, msg: StepMessage, exc: TransientModelError, *, count: bool = True) -> None:
    """Try the step again later as a scheduled message, without holding a worker meanwhile."""
    attempt = msg.attempt + 1
    if count and attempt > b.settings.step_max_retries:
        log.error("step %s still failing after %s reschedules: %s", msg.step, msg.attempt, exc)
        raise exc  # the broker redelivers, then dead-letters; the sweep decides from there
    delay = exc.retry_after if exc.retry_after is not None else b.settings.step_retry_base_seconds * 2 ** (attempt - 1)
    delay = min(max(delay, 0.0), MAX_BACKOFF_SECONDS)
    retry = msg.model_copy(update={"attempt": attempt if count else msg.attempt})
    message_id = retry.message_id if count else f"{retry.message_id}:w{time.time_ns()}"
    b.queue.send(
        retry.model_dump_json().encode(),
        message_id=message_id,
        scheduled_at=utcnow() + timedelta(seconds=delay),
        continuation=msg.step > 1,
    )
    log.warning("step %s rescheduled in %.1fs: %s", msg.step, delay, exc, extra={"event": "step_rescheduled"})


def settle(b: Backends, job: Job, cp: Checkpoint, etag: str | None = None) -> None:
    """Everything that follows a commit. Idempotent: a redelivery runs it again harmlessly.

    etag: the ETag of `job` as read for this delivery; the projection's conditional write tries it
    first (and `job` is the record it changes), so the step reads and parses the record once.
    """
    parks = cp.outcome is None and _awaits_approval(job, cp)
    ends = cp.outcome is not None
    if cp.outcome is None and not parks and not fanout.parks(cp):
        nxt = StepMessage(job_id=cp.job_id, step=cp.step + 1)
        # First: it is the hot path. A continuation, served before first steps of new jobs.
        b.queue.send(nxt.model_dump_json().encode(), message_id=nxt.message_id, continuation=True)
    elif cp.outcome is not None:
        state = AgentState.model_validate(cp.state)
        if state.report is not None:
            b.reports.save(cp.job_id, state.report, durable=False)  # the job's last write below fsyncs it
        if job.session_id and cp.outcome.status == "succeeded" and state.report is not None:
            findings = [c.quote for c in state.report.citations]
            b.memory.remember(job.tenant, job.session_id, findings, notes=state.notes, job_id=job.id)
    # The projection of a step followed by a next message need not wait for its own fsync: that
    # message is already durable, and its step folds in any checkpoint the record missed. A job's
    # last step writes its report, record and provenance without an fsync each, then the ledger's
    # final record with one: WAL frames reach the disk in order, so that fsync carries them all
    # before the message's completion (another file) can reach the disk.
    applied = False
    paged_through = b.jobs.seal_pages(job)  # before the record drops those lines

    def apply(j: Job) -> bool:
        nonlocal applied
        applied = lifecycle.apply_checkpoint(j, cp, lambda n: b.checkpoints.get(j.id, n), paged_through)
        return applied

    current = (job, etag) if etag is not None else None
    updated = b.jobs.update(job.id, apply, durable=parks, current=current)
    if parks:
        _park(b, job, cp)
    if ends and updated is not None:
        # After the projection, so the record's timings are final; a redelivery writes the same record.
        record = provenance.build(updated, cp, b.checkpoints.all(job.id), b.model, b.settings)
        provenance.save(b.objects, record, durable=False)
    # The ledger holds each job's running total (set, not added). A step that used no tokens leaves
    # it unchanged, unless it ends the job: the final step re-sets it, which also repairs a ledger
    # write lost to a crash after an earlier step's commit. Last: its final record is the fsync.
    if cp.usage.total_tokens or ends:
        _record_usage(b, job, cp)
    if fanout.parks(cp):
        fanout.spawn(b, job, cp)  # after the projection: a child that ends finds the parent's plan step
    elif cp.outcome is not None and job.parent_id:
        fanout.resume_if_done(b, job.parent_id)
    if cp.outcome is not None and updated is not None:
        job_finished(b, updated)  # the outbox is idempotent: a redelivery announces nothing twice
    if cp.outcome is not None and applied:  # only the delivery that moved the record says the job ended
        log.info(
            "job %s %s after %s steps",
            job.id,
            cp.outcome.status,
            cp.step,
            extra={"event": "job_finished", "reason": cp.outcome.error.reason if cp.outcome.error else None},
        )


# --- human approval: a parked job holds no worker and no message ----------------------------------


def _approval_after(job: Job, step: int) -> ApprovalRequest | None:
    return next((a for a in job.approvals if a.after_step == step), None)


def _pending_calls(cp: Checkpoint) -> list[str]:
    state = AgentState.model_validate(cp.state)
    return [c["function"]["name"] for c in state.pending_tool_calls()]


def _awaits_approval(job: Job, cp: Checkpoint) -> bool:
    """Whether step cp.step+1 must wait for a human: its tool calls need approval and none was decided."""
    if job.policy.approval == "none" or cp.outcome is not None:
        return False
    asked = _approval_after(job, cp.step)
    if asked is not None:
        return asked.decision is None
    return bool(approval_needed(job.policy.approval, _pending_calls(cp)))


def _park(b: Backends, job: Job, cp: Checkpoint) -> None:
    """Park the job after cp and schedule the message that ends it if nobody decides in time."""
    pending = approval_needed(job.policy.approval, _pending_calls(cp))
    deadline = utcnow() + timedelta(seconds=job.policy.approval_timeout_seconds)
    parked = b.jobs.update(job.id, lambda j: lifecycle.park(j, cp.step, pending, deadline))
    asked = _approval_after(parked, cp.step) if parked is not None else None
    if asked is None or asked.decision is not None:
        return
    _send_deadline(b, job.id, cp.step, asked.deadline)
    log.info(
        "job %s waits for approval of %s after step %s",
        job.id,
        ", ".join(asked.pending),
        cp.step,
        extra={"event": "waiting_for_approval"},
    )


def _send_deadline(b: Backends, job_id: str, after_step: int, deadline: datetime, *, again: bool = False) -> None:
    msg = StepMessage(job_id=job_id, step=after_step + 1, purpose="approval_deadline")
    # One id per deadline, so a re-parked redelivery does not add a second; a deliberate resend needs its own.
    message_id = f"{msg.message_id}:deadline:{int(deadline.timestamp())}" + (f":{time.time_ns()}" if again else "")
    b.queue.send(msg.model_dump_json().encode(), message_id=message_id, scheduled_at=deadline, continuation=True)


def _approval_deadline(b: Backends, job: Job, msg: StepMessage) -> None:
    asked = _approval_after(job, msg.step - 1)
    if asked is None or asked.decision is not None or job.finished:
        return  # decided (or ended) meanwhile: nothing to do
    if utcnow() < asked.deadline:  # early (clock skew between instances): look again at the deadline
        _send_deadline(b, job.id, asked.after_step, asked.deadline, again=True)
        return
    ended = b.jobs.update(job.id, lambda j: lifecycle.expire_approval(j, asked.after_step))
    if ended is not None and ended.finished:
        log.warning("job %s timed out waiting for approval", job.id, extra={"event": "approval_timeout"})
        job_finished(b, ended)


def job_finished(b: Backends, job: Job) -> None:
    """What follows any ending of a job, in a settled step or out of band (sweep, cancel, deadline).

    The ledger takes the usage the record shows (monotonic by step, so a no-op after a settled final
    step): a job ended out of band may have a projected step whose own ledger write was cut short
    and can never be redone (its checkpoint became unreadable). Then the webhook outbox announces it.
    """
    if job.usage.total_tokens:
        b.ledger.record(job.tenant, month_of(job.created_at), job.id, job.usage, job.step, final=True)
    outbox.announce(b, job)


def _account_last_commit(b: Backends, job_id: str) -> None:
    """Record the usage of a job's last committed step from the checkpoint alone (idempotent)."""
    try:
        steps = b.checkpoints.steps(job_id)
        cp = b.checkpoints.get(job_id, steps[-1]) if steps else None
    except (CorruptRecord, LookupError):
        return  # an unreadable checkpoint is reported on its own; nothing to account from
    if cp is None or cp.tenant is None or cp.ledger_month is None:
        return  # written before checkpoints named their ledger
    b.ledger.record(cp.tenant, cp.ledger_month, job_id, cp.total_usage, cp.step, final=cp.outcome is not None)


def _record_usage(b: Backends, job: Job, cp: Checkpoint) -> None:
    before, after = b.ledger.record(
        job.tenant, month_of(job.created_at), job.id, cp.total_usage, cp.step, final=cp.outcome is not None
    )
    budget = b.settings.budget_for(job.tenant)
    metrics.record_budget(job.tenant, after, budget)
    if before < BUDGET_WARNING_RATIO * budget <= after:
        log.warning(
            "tenant %s passed %d%% of its monthly token budget (%s of %s)",
            job.tenant,
            round(BUDGET_WARNING_RATIO * 100),
            after,
            budget,
            extra={"event": "budget_warning", "tenant": job.tenant},
        )
