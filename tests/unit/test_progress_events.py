"""Event derivation: numbered from the record in a stable order, so event k is always the same event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.contracts import ApprovalRequest, Checkpoint, Job, JobError, Outcome, Policy
from shared.engine import job as lifecycle
from shared.services.events import derive

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def checkpoint(step: int, outcome: Outcome | None = None) -> Checkpoint:
    return Checkpoint(
        job_id="j",
        step=step,
        kind="model",
        summary=f"s{step}",
        state={},
        outcome=outcome,
        created_at=T0 + timedelta(seconds=step),
    )


def fold(job: Job, cp: Checkpoint) -> None:
    lifecycle.apply_checkpoint(job, cp, lambda n: None)


def shown(job: Job, ahead: Checkpoint | None = None) -> list[tuple[int, str]]:
    return [(e.id, e.type) for e in derive(job, ahead)]


def test_events_only_grow_at_the_end_through_steps_approvals_and_the_ending() -> None:
    job = Job(id="j", tenant="t", task="q", policy=Policy(approval="before_report"), created_at=T0)
    history = [shown(job)]
    fold(job, checkpoint(1))
    history.append(shown(job))
    lifecycle.park(job, 1, ["write_report"], T0 + timedelta(hours=1))
    history.append(shown(job))
    lifecycle.decide(job, "approved", "ok", "k", T0 + timedelta(seconds=90))
    history.append(shown(job))
    fold(job, checkpoint(2, Outcome(status="succeeded")))
    history.append(shown(job))
    for earlier, later in zip(history, history[1:], strict=False):
        assert later[: len(earlier)] == earlier and len(later) > len(earlier)
    assert history[-1] == [
        (1, "queued"),
        (2, "step"),
        (3, "waiting_for_approval"),
        (4, "approved"),
        (5, "step"),
        (6, "report_ready"),
        (7, "succeeded"),
    ]


def test_a_committed_step_not_yet_projected_comes_where_the_record_will_put_it() -> None:
    job = Job(id="j", tenant="t", task="q", policy=Policy(), created_at=T0)
    fold(job, checkpoint(1))
    early = shown(job, checkpoint(2))
    fold(job, checkpoint(2))
    assert shown(job) == early == [(1, "queued"), (2, "step"), (3, "step")]
    assert shown(job, checkpoint(5)) == early  # only the very next step counts


def test_an_out_of_band_ending_keeps_later_commits_out_of_the_story() -> None:
    job = Job(id="j", tenant="t", task="q", policy=Policy(), created_at=T0)
    fold(job, checkpoint(1))
    lifecycle.end(job, "failed", "dead_lettered", "step 2 failed", T0 + timedelta(seconds=1, milliseconds=500))
    before = shown(job)
    fold(job, checkpoint(2))  # committed after the sweep ended the job
    assert shown(job) == before == [(1, "queued"), (2, "step"), (3, "failed")]
    assert derive(job)[-1].data["error"] == JobError(reason="dead_lettered", detail="step 2 failed").model_dump()


def test_a_timed_out_approval_has_no_decision_event_and_ends_failed() -> None:
    job = Job(id="j", tenant="t", task="q", policy=Policy(approval="before_report"), created_at=T0)
    fold(job, checkpoint(1))
    lifecycle.park(job, 1, ["write_report"], T0 + timedelta(seconds=10))
    assert not lifecycle.expire_approval(job, 1, T0 + timedelta(seconds=5))  # not yet
    assert lifecycle.expire_approval(job, 1, T0 + timedelta(seconds=11))
    assert not lifecycle.decide(job, "approved", None, "k")
    assert [t for _, t in shown(job)] == ["queued", "step", "waiting_for_approval", "failed"]
    assert isinstance(job.approvals[0], ApprovalRequest) and job.approvals[0].decision == "timed_out"
