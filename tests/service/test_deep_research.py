"""Deep research: a plan fans out to child jobs on the queue, the parent waits parked, and resumes once.

Run with the app's own queue consumer (two workers), the scripted server playing the model, and
faults injected where fan-in is delicate: duplicate deliveries of the children's last steps and of
the parent's resume step, and a crash between a child's commit and the parent's resume.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import pytest

from shared.contracts import StepMessage
from shared.engine.backends import Backends
from shared.engine.fanout import COMPOSE_KIND, PLAN_KIND
from shared.engine.steps import handle_step
from shared.ports import StepQueue
from shared.services import jobs
from tests.fixtures.agent_scripts import SCRIPTED_ENV, Researcher, call, consume, task_of
from tests.fixtures.app import ingest_samples
from tests.fixtures.scripted_openai import ScriptedOpenAI, completion, error

SUBQUESTIONS = [
    "How does the sweep handle dead-lettered messages?",
    "What does a backup contain?",
    "How is a restore verified?",
    "FAIL: what breaks this sub-question?",
    "When does cancelling a job take effect?",
]
DEEP = {"mode": "deep", "max_subquestions": 5}


@pytest.fixture
def scripted_env(app_env: dict[str, str], scripted_openai: ScriptedOpenAI) -> dict[str, str]:
    app_env.update(SCRIPTED_ENV)
    app_env["OPENAI_BASE_URL"] = scripted_openai.base_url
    return app_env


def planner_then_researchers(researcher: Researcher) -> Any:
    """Plan the five sub-questions; research each; the FAIL sub-question's job is refused by the model."""

    def reply(body: dict[str, Any]) -> Any:
        offered = {t["function"]["name"] for t in body.get("tools") or []}
        if "plan_subquestions" in offered:
            return completion(tool_calls=[call("plan_subquestions", subquestions=SUBQUESTIONS)], prompt_tokens=300)
        if task_of(body).startswith("FAIL"):
            return error(400, "The request was rejected.")
        return researcher(body)

    return reply


class FaultyQueue:
    """The embedded queue, failing the first `fail` sends of one message id as a crash would interrupt them."""

    def __init__(self, inner: StepQueue, message_id: str, fail: int = 1) -> None:
        self.inner, self.message_id, self.fail = inner, message_id, fail
        self.attempts = 0
        self._lock = threading.Lock()

    def send(self, body: bytes, **kwargs: Any) -> Any:
        if kwargs.get("message_id") == self.message_id:
            with self._lock:
                self.attempts += 1
                if self.attempts <= self.fail:
                    raise ConnectionError("killed between the child's commit and the parent's resume")
        return self.inner.send(body, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_five_children_one_failing_duplicates_and_a_kill_during_fan_in(
    scripted_env: dict[str, str], backends: Backends, scripted_openai: ScriptedOpenAI
) -> None:
    ingest_samples(backends)
    scripted_openai.respond_with(planner_then_researchers(Researcher()))
    parent, _ = jobs.submit(
        backends, "dev", jobs.JobRequest(task="How do the sweep, backups and cancel work?", policy=DEEP)
    )
    faulty = FaultyQueue(backends.queue, StepMessage(job_id=parent.id, step=2).message_id)
    backends.queue = faulty  # type: ignore[assignment]

    [done] = consume(backends, [parent.id], timeout=60)

    children = [backends.jobs.get(c) for c in done.children]
    assert [c.task for c in children if c] == SUBQUESTIONS
    assert [c.status for c in children if c] == ["succeeded", "succeeded", "succeeded", "failed", "succeeded"]
    assert faulty.attempts >= 2  # the first resume was lost to the "kill"; a redelivery sent it again
    assert done.status == "succeeded", done.error
    assert [p.kind for p in done.progress] == [PLAN_KIND, COMPOSE_KIND]  # planned once, resumed once
    report = backends.reports.get(parent.id)
    assert report is not None
    sections = re.findall(r"^## (.+)$", report.markdown, flags=re.M)
    assert sections == SUBQUESTIONS
    failed_section = report.markdown.split("## FAIL")[1].split("\n## ")[0]
    assert "Not answered" in failed_section and "model_rejected" in failed_section
    markers = {int(n) for n in re.findall(r"\[(\d+)\]", report.markdown)}
    assert markers == {c.n for c in report.citations} and len(report.citations) >= 4
    for c in report.citations:  # every delivered citation is verified against the chunk it quotes
        [chunk] = backends.index.get_chunks(c.doc_id, c.chunk_id)
        assert chunk.content[c.start : c.end] == c.quote
    # The budget split: each child may spend what planning left of the parent's limit, divided by five.
    assert all(c.policy.max_tokens <= parent.policy.max_tokens // 5 for c in children if c)
    assert all(c.policy.mode == "standard" and c.parent_id == parent.id for c in children if c)

    # Late duplicates of every child's last step and of the parent's resume change nothing.
    before = report.model_dump()
    for c in children:
        assert c is not None
        handle_step(backends, StepMessage(job_id=c.id, step=c.step).model_dump_json().encode())
    handle_step(backends, StepMessage(job_id=parent.id, step=2).model_dump_json().encode())
    again = backends.jobs.get(parent.id)
    assert again is not None and [p.kind for p in again.progress] == [PLAN_KIND, COMPOSE_KIND]
    assert backends.checkpoints.steps(parent.id) == [1, 2]
    assert backends.reports.get(parent.id).model_dump() == before  # type: ignore[union-attr]
    usage_of_tree = sum(
        (backends.jobs.get(i).usage.total_tokens for i in [parent.id, *done.children]),  # type: ignore[union-attr]
    )
    ledger = backends.ledger.total("dev", done.created_at.strftime("%Y-%m"))
    assert ledger.total_tokens == usage_of_tree  # the tenant's budget sees the whole tree, each job once


def test_policy_can_make_a_failed_child_fatal(
    scripted_env: dict[str, str], backends: Backends, scripted_openai: ScriptedOpenAI
) -> None:
    ingest_samples(backends)
    scripted_openai.respond_with(planner_then_researchers(Researcher()))
    policy = {**DEEP, "fail_on_child_failure": True}
    parent, _ = jobs.submit(backends, "dev", jobs.JobRequest(task="Everything, strictly", policy=policy))

    [done] = consume(backends, [parent.id], timeout=60)

    assert done.status == "failed" and done.error is not None
    assert done.error.reason == "subquestions_failed" and "1 of 5" in done.error.detail
    assert backends.reports.get(parent.id) is not None  # the sections that were answered are kept


def test_cancelling_the_parent_cancels_the_tree(backends: Backends) -> None:
    ingest_samples(backends)
    parent, _ = jobs.submit(
        backends, "dev", jobs.JobRequest(task="How do backups and the dead-letter sweep work?", policy=DEEP)
    )
    handle_step(backends, StepMessage(job_id=parent.id, step=1).model_dump_json().encode())  # plan; children created
    planned = backends.jobs.get(parent.id)
    assert planned is not None and planned.status == "running" and len(planned.children) >= 2

    jobs.cancel(backends, "dev", parent.id)
    [done] = consume(backends, [parent.id], timeout=30)

    assert done.status == "cancelled"
    assert {backends.jobs.get(c).status for c in done.children} == {"cancelled"}  # type: ignore[union-attr]


def test_a_resume_step_that_arrives_early_waits_for_the_children(backends: Backends) -> None:
    ingest_samples(backends)
    parent, _ = jobs.submit(backends, "dev", jobs.JobRequest(task="How do backups work?", policy=DEEP))
    handle_step(backends, StepMessage(job_id=parent.id, step=1).model_dump_json().encode())

    with pytest.raises(RuntimeError, match="still running"):  # the broker keeps the message and delivers it again
        handle_step(backends, StepMessage(job_id=parent.id, step=2).model_dump_json().encode())

    assert backends.checkpoints.steps(parent.id) == [1]


def test_the_offline_model_plans_one_sub_question_per_document_and_reports_each(backends: Backends) -> None:
    ingest_samples(backends)
    parent, _ = jobs.submit(
        backends, "dev", jobs.JobRequest(task="How do backups and the dead-letter sweep work?", policy=DEEP)
    )

    [done] = consume(backends, [parent.id], timeout=60)

    assert done.status == "succeeded", done.error
    report = backends.reports.get(parent.id)
    assert report is not None and report.offline_model
    sections = re.findall(r"^## (.+)$", report.markdown, flags=re.M)
    assert len(sections) == len(done.children) >= 2
    assert json.dumps(report.model_dump(mode="json"))  # serialisable as the API returns it


def test_a_child_ended_by_the_dead_letter_sweep_still_resumes_the_parent(backends: Backends) -> None:
    from shared.maintenance import sweep
    from tests.service.test_maintenance import dead_letter

    ingest_samples(backends)
    parent, _ = jobs.submit(
        backends, "dev", jobs.JobRequest(task="How do backups and the dead-letter sweep work?", policy=DEEP)
    )
    handle_step(backends, StepMessage(job_id=parent.id, step=1).model_dump_json().encode())
    planned = backends.jobs.get(parent.id)
    assert planned is not None
    first, *others = planned.children
    assert others
    for child in others:  # every other sub-question runs to its end
        while not backends.jobs.get(child).finished:  # type: ignore[union-attr]
            step = backends.jobs.get(child).step + 1  # type: ignore[union-attr]
            handle_step(backends, StepMessage(job_id=child, step=step).model_dump_json().encode())
    # Delivered already (handled by hand above): the messages the engine enqueued meanwhile are spent.
    while spent := backends.queue.receive(100):  # type: ignore[attr-defined]
        for m in spent:
            backends.queue.complete(m)  # type: ignore[attr-defined]
    # The first one's step keeps failing for good: the sweep ends it, which no settled step does.
    dead_letter(backends, first, 1, RuntimeError("the adapter crashed"))
    assert sweep.sweep_dead_letters(backends).failed == 1

    [done] = consume(backends, [parent.id], timeout=30)

    assert backends.jobs.get(first).status == "failed"  # type: ignore[union-attr]
    assert done.status == "succeeded" and [p.kind for p in done.progress] == [PLAN_KIND, COMPOSE_KIND]
    assert "Not answered" in backends.reports.get(parent.id).markdown  # type: ignore[union-attr]


def test_a_parked_parent_is_not_stale_while_its_children_are_unfinished(backends: Backends) -> None:
    from datetime import timedelta

    from shared.contracts import utcnow
    from shared.maintenance import checks

    ingest_samples(backends)
    parent, _ = jobs.submit(
        backends, "dev", jobs.JobRequest(task="How do backups and the dead-letter sweep work?", policy=DEEP)
    )
    handle_step(backends, StepMessage(job_id=parent.id, step=1).model_dump_json().encode())
    later = utcnow() + timedelta(minutes=backends.settings.stale_job_minutes + 5)

    stale = {s.job_id for s in checks.build_report(backends, later).stale_jobs}

    children = backends.jobs.get(parent.id).children  # type: ignore[union-attr]
    assert parent.id not in stale and set(children) <= stale  # the queued children are what is stuck
