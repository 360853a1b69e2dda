"""The dead-letter sweep: decide, for each dead-lettered step, whether it runs again or ends its job.

Classification. The broker's own description of a MaxDeliveryCountExceeded dead letter is
generic ("could not be consumed after 10 delivery attempts"), so the cause comes from the
job's dead-letter note, which the step engine writes on the last delivery with a typed
`cause`, judged by exception type where the failure was raised (shared.engine.steps.failure_cause):
- worth another try: `transient` (our transient model error, an unavailable dependency, a step
  out of order, a timeout or connection error) and `lost_lock`: no note for the step means it
  never reported a failure (the worker died or lost its lock on every delivery). A TTL expiry
  is judged the same way (the step may never have run);
- not: `permanent`, `poison` (a bug that fails the same way every time), `policy`, `budget`,
  and a message that something dead-lettered on purpose with its own reason.
Transient causes are re-submitted (new message id "{job_id}:{step}:r{sequence}") while the
job has had fewer than DLQ_MAX_RESUBMISSIONS re-submissions; past that the job fails with
reason retries_exhausted. Permanent causes fail the job with reason step_failed (or
dead_lettered, for a deliberate dead-lettering), the exception in the detail. A job whose
cancel was requested is cancelled instead. A message whose job no longer exists or has
finished, whose step was committed meanwhile (stale) or sent again since (superseded) is
completed with a log line and changes nothing; so is a message the step engine rejected as
never runnable (reasons MalformedMessage, UnknownJob, StepNotNext: a stray step is judged again
here from the checkpoints, since in Azure the broker dead-letters it as MaxDeliveryCountExceeded).
A message the sweep cannot handle (an unreadable job record) is released unlocked and reported as
an error by every run until an operator deals with it.

Crash safety. Per message: decide (recorded once in the job's re-submission log), act (send,
deduplicated by the deterministic message id), update the job record (set, not add), and
only then complete the dead letter. A crash anywhere repeats the same decision on the next
sweep, so nothing is lost and nothing is counted twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from shared.contracts import (
    MAX_DELIVERY_COUNT_EXCEEDED,
    RETRYABLE_CAUSES,
    FailureCause,
    Job,
    StepMessage,
    utcnow,
)
from shared.engine import fanout, outbox, steps
from shared.engine import job as lifecycle
from shared.engine.backends import Backends
from shared.engine.steps import MALFORMED_MESSAGE, REJECTION_REASONS, STEP_NOT_NEXT, UNKNOWN_JOB
from shared.maintenance.lease import exclusive
from shared.maintenance.resubmissions import (
    JobNotResubmittable,
    Resubmission,
    ResubmissionLog,
    ResubmissionStore,
    dead_letter_key,
)
from shared.observability.logs import job_context
from shared.ports import QueueMessage

log = logging.getLogger("agent.maintenance")

LEASE = "dead-letters"
BATCH = 50
MAX_PER_RUN = 1000  # a run that meets more leaves the rest to the next run, 15 minutes later
BROKER_EXPIRED = "TTLExpiredException"

Outcome = Literal["resubmitted", "failed", "cancelled", "stale", "superseded", "dropped", "error"]


class DeadLetterAction(BaseModel):
    """What the sweep (or an operator) did with one dead-lettered message."""

    message_id: str
    sequence_number: int
    job_id: str | None = None
    step: int | None = None
    action: Outcome
    cause: str | None = Field(
        None,
        description="The failure's cause (transient, lost_lock, permanent, poison, policy, "
        "budget), or operator / cancel_requested.",
    )
    reason: str | None = Field(
        None,
        description="The job's error reason when the action ended the job; why it was dropped otherwise "
        "(MalformedMessage, UnknownJob, StepNotNext, job_finished).",
    )
    detail: str = ""
    new_message_id: str | None = Field(None, description="The re-submitted step's message id.")
    resubmissions: int | None = Field(None, description="The job's re-submissions after this action.")


class SweepResult(BaseModel):
    started_at: datetime = Field(default_factory=utcnow)
    examined: int = 0
    resubmitted: int = 0
    failed: int = Field(0, description="Jobs failed (or cancelled) because their step cannot succeed.")
    completed_without_action: int = Field(0, description="Stale, superseded, orphaned or malformed messages.")
    errors: int = Field(0, description="Messages left in the dead-letter queue for the next run.")
    actions: list[DeadLetterAction] = Field(default_factory=list)
    duration_ms: float = 0.0

    def add(self, action: DeadLetterAction) -> None:
        self.examined += 1
        self.actions.append(action)
        if action.action == "resubmitted":
            self.resubmitted += 1
        elif action.action in ("failed", "cancelled"):
            self.failed += 1
        elif action.action == "error":
            self.errors += 1
        else:
            self.completed_without_action += 1

    def counts(self) -> dict[str, int]:
        return {
            "examined": self.examined,
            "resubmitted": self.resubmitted,
            "failed": self.failed,
            "completed_without_action": self.completed_without_action,
            "errors": self.errors,
        }


def classify(job: Job, step: int, message: QueueMessage) -> tuple[FailureCause, str]:
    """(cause, what failed), by the rule in the module docstring."""
    if message.dead_letter_reason not in (None, MAX_DELIVERY_COUNT_EXCEEDED, BROKER_EXPIRED):
        return "permanent", f"dead-lettered with reason {message.dead_letter_reason}: {message.dead_letter_description}"
    note = job.dead_letter if job.dead_letter and job.dead_letter.step == step else None
    if note is None:
        return "lost_lock", (
            f"step {step} recorded no failure ({message.dead_letter_reason or 'dead-lettered'}): "
            "the worker stopped or lost its lock on every delivery"
        )
    # A note written before causes were recorded has none: another try is the safe judgement,
    # bounded by DLQ_MAX_RESUBMISSIONS.
    return note.cause or "transient", note.description


def _choose(
    b: Backends, job: Job, step: int, message: QueueMessage, history: ResubmissionLog, operator: bool
) -> Resubmission:
    if step <= job.step:
        return Resubmission(
            key="",
            step=step,
            action="stale",
            detail=f"step {step} was committed meanwhile (the job is at step {job.step})",
        )
    if history.superseded(step, message.enqueued_at):
        return Resubmission(key="", step=step, action="superseded", detail=f"step {step} was sent again since")
    resend = f"{job.id}:{step}:r{message.sequence_number}"
    if operator:
        return Resubmission(
            key="",
            step=step,
            action="resubmitted",
            message_id=resend,
            cause="operator",
            detail="re-submitted by an operator",
        )
    if job.cancel_requested:
        return Resubmission(
            key="",
            step=step,
            action="cancelled",
            cause="cancel_requested",
            reason="cancelled",
            detail=f"cancelled by request; step {step} had been dead-lettered",
        )
    cause, what = classify(job, step, message)
    limit = b.settings.dlq_max_resubmissions
    if cause in RETRYABLE_CAUSES and history.resubmitted < limit:
        return Resubmission(key="", step=step, action="resubmitted", message_id=resend, cause=cause, detail=what)
    if cause in RETRYABLE_CAUSES:
        return Resubmission(
            key="",
            step=step,
            action="failed",
            cause=cause,
            reason="retries_exhausted",
            detail=f"step {step} was dead-lettered again after {history.resubmitted} "
            f"re-submission(s) (DLQ_MAX_RESUBMISSIONS={limit}): {what}",
        )
    reason = "dead_lettered" if message.dead_letter_reason not in (None, MAX_DELIVERY_COUNT_EXCEEDED) else "step_failed"
    return Resubmission(
        key="",
        step=step,
        action="failed",
        cause=cause,
        reason=reason,
        detail=f"step {step} failed on every delivery: {what}",
    )


def _project(entry: Resubmission, history: ResubmissionLog) -> Callable[[Job], bool]:
    """The job record's transitions for a decision: idempotent, so a repeated sweep writes nothing new."""

    def change(job: Job) -> bool:
        changed = lifecycle.note_resubmissions(job, history.resubmitted)
        if entry.action in ("failed", "cancelled"):
            changed |= lifecycle.end(job, entry.action, entry.reason or "dead_lettered", entry.detail, entry.at)
        changed |= lifecycle.note_handled(job, entry.step, entry.key, entry.action, entry.message_id)
        return changed

    return change


def handle_dead_letter(b: Backends, message: QueueMessage, *, operator: bool = False) -> DeadLetterAction:
    """Decide, act, update the job, then complete the message (in that order: see the module docstring).

    operator=True re-submits whatever the cause; a finished job then raises JobNotResubmittable.
    """
    seen = DeadLetterAction(message_id=message.message_id, sequence_number=message.sequence_number, action="dropped")
    if b'"webhook"' in message.body:
        try:
            webhook = outbox.WebhookMessage.model_validate_json(message.body)
        except ValidationError:
            webhook = None
        if webhook is not None:
            # A delivery attempt that could not even run (storage down): send it again under a new id; its
            # delivery record decides whether the attempt is still due, so a repeat is harmless.
            b.queue.send(message.body, message_id=f"{message.message_id}:s{time.time_ns()}")
            b.queue.complete_dead_letter(message)
            log.warning(
                "dead-lettered webhook attempt %s sent again",
                message.message_id,
                extra={"event": "dead_letter_webhook_resent", "job_id": webhook.job_id},
            )
            return seen.model_copy(update={"job_id": webhook.job_id, "action": "resubmitted", "detail": "webhook"})
    try:
        msg = StepMessage.model_validate_json(message.body)
    except ValidationError:
        return _drop(b, message, seen, MALFORMED_MESSAGE, "not a step message")
    seen.job_id, seen.step = msg.job_id, msg.step
    job = b.jobs.get(msg.job_id)  # an unreadable record raises: the message stays for an operator
    if job is None:
        return _drop(b, message, seen, UNKNOWN_JOB, f"the job no longer exists ({msg.job_id})")
    with job_context(job_id=job.id, step=msg.step, tenant=job.tenant):
        if message.dead_letter_reason in REJECTION_REASONS and not operator:
            # Rejected by the step engine as never runnable for this job: reported, purged, the job untouched.
            return _drop(b, message, seen, str(message.dead_letter_reason), message.dead_letter_description or "")
        if job.finished:
            if operator:
                raise JobNotResubmittable(f"job {job.id} already {job.status}; re-run it as a new job instead")
            if job.parent_id:  # a crash may have come between ending it and resuming its parent
                fanout.resume_if_done(b, job.parent_id)
            return _drop(b, message, seen, "job_finished", f"the job already {job.status}")
        committed = b.checkpoints.steps(job.id)
        last = max([job.step, *committed])
        if msg.step > last + 1 and not operator:
            # A stray step the broker dead-lettered after MaxDeliveryCount (Azure: the trigger cannot
            # dead-letter with a reason): the same judgement the step engine makes, made again here.
            return _drop(b, message, seen, STEP_NOT_NEXT, f"step {msg.step} is not next (last committed {last})")
        store = ResubmissionStore(b.objects)
        history, entry = store.decide(
            job.id, dead_letter_key(message), lambda h: _choose(b, job, msg.step, message, h, operator)
        )
        if entry.action == "resubmitted" and entry.message_id:
            again = StepMessage(job_id=job.id, step=msg.step, origin=entry.message_id)
            b.queue.send(again.model_dump_json().encode(), message_id=entry.message_id, continuation=msg.step > 1)
        updated = b.jobs.update(job.id, _project(entry, history)) or job
        if updated.finished:
            steps.job_finished(b, updated)  # ended here, out of band: accounted and announced as any ending
        if updated.finished and updated.parent_id:
            fanout.resume_if_done(b, updated.parent_id)  # a sub-question ended here, not in a settled step
        b.queue.complete_dead_letter(message)
        level = logging.WARNING if entry.action in ("failed", "cancelled") else logging.INFO
        log.log(
            level,
            "dead-lettered step %s: %s (%s) %s",
            msg.step,
            entry.action,
            entry.cause or "-",
            entry.detail,
            extra={"event": f"dead_letter_{entry.action}", "reason": entry.reason or entry.cause},
        )
        return seen.model_copy(
            update={
                "action": entry.action,
                "cause": entry.cause,
                "reason": entry.reason,
                "detail": entry.detail,
                "new_message_id": entry.message_id,
                "resubmissions": updated.resubmissions,
            }
        )


def _drop(b: Backends, message: QueueMessage, seen: DeadLetterAction, reason: str, detail: str) -> DeadLetterAction:
    """Complete a dead letter that concerns no running job, with a log line saying why: its trail ends here."""
    b.queue.complete_dead_letter(message)
    log.warning(
        "dead-lettered message %s dropped (%s): %s",
        message.message_id,
        reason,
        detail,
        extra={"event": "dead_letter_dropped", "reason": reason, "job_id": seen.job_id},
    )
    return seen.model_copy(update={"reason": reason, "detail": detail})


def sweep_dead_letters(b: Backends) -> SweepResult:
    """Work through the dead-letter queue once (under the dead-letters lease)."""
    started = time.perf_counter()
    result = SweepResult()
    with exclusive(b.objects, LEASE) as lease:
        seen: set[int] = set()
        while len(seen) < MAX_PER_RUN:
            batch = b.queue.receive_dead_letters(BATCH, lock_seconds=b.settings.queue_lock_seconds)
            fresh = [m for m in batch if m.sequence_number not in seen]
            _release([m for m in batch if m.sequence_number in seen], b)  # left for the next run, unlocked
            if not fresh:
                break
            for message in fresh:
                seen.add(message.sequence_number)
                result.add(_handle_safely(b, message))
                lease.keep_alive()
    result.duration_ms = round((time.perf_counter() - started) * 1000, 3)
    log.info(
        "dead-letter sweep: %s",
        ", ".join(f"{k}={v}" for k, v in result.counts().items()),
        extra={"event": "dlq_sweep", "count": result.examined, "duration_ms": result.duration_ms},
    )
    return result


def _release(messages: list[QueueMessage], b: Backends) -> None:
    """Unlock dead letters this run will not handle, so a sweep run a moment later sees them."""
    for message in messages:
        try:
            b.queue.abandon_dead_letter(message)
        except Exception:  # noqa: BLE001 - then its lock expires on its own
            log.warning("could not release dead letter %s; it unlocks when its lock expires", message.message_id)


def _handle_safely(b: Backends, message: QueueMessage) -> DeadLetterAction:
    try:
        return handle_dead_letter(b, message)
    except Exception as exc:  # noqa: BLE001 - one bad message must not stop the sweep; it stays for the next run
        log.exception(
            "dead-lettered message %s not handled; left for the next sweep",
            message.message_id,
            extra={"event": "dead_letter_error"},
        )
        _release([message], b)
        return DeadLetterAction(
            message_id=message.message_id,
            sequence_number=message.sequence_number,
            action="error",
            detail=f"{type(exc).__name__}: {exc}"[:500],
        )
