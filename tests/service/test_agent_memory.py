"""Session memory across jobs: a later job of the session sees earlier findings in its first user
message while they are fresh, and nothing once MEMORY_TTL_SECONDS has passed."""

from __future__ import annotations

from typing import Any

import pytest

from agents.prompts import user_prompt
from shared.contracts import MemoryItem
from shared.engine.backends import Backends
from shared.engine.memory import SessionMemory
from shared.services import jobs
from tests.fixtures.agent_scripts import SCRIPTED_ENV, Researcher, run_steps, task_of
from tests.fixtures.app import ingest_samples
from tests.fixtures.scripted_openai import ScriptedOpenAI

TTL = 60.0


class Clock:
    """Time the test moves by hand: the TTL passes without the test sleeping through it."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def model_env(app_env: dict[str, str], scripted_openai: ScriptedOpenAI) -> dict[str, str]:
    app_env.update({"OPENAI_BASE_URL": scripted_openai.base_url, "MEMORY_TTL_SECONDS": str(TTL), **SCRIPTED_ENV})
    return app_env


@pytest.fixture
def clock(model_env: dict[str, str], backends: Backends) -> Clock:
    assert backends.memory.ttl == TTL  # the composition root reads MEMORY_TTL_SECONDS
    clock = Clock()
    backends.memory = SessionMemory(
        backends.objects, ttl_seconds=TTL, max_items=backends.settings.memory_max_items, clock=clock
    )
    return clock


def test_later_jobs_see_session_findings_before_the_ttl_and_none_after(
    clock: Clock, backends: Backends, scripted_openai: ScriptedOpenAI
) -> None:
    ingest_samples(backends)
    scripted_openai.respond_with(Researcher(reads=1))

    def run(task: str, session: str | None, tenant: str = "dev", **kw: Any) -> tuple[Any, str]:
        job, _ = jobs.submit(backends, tenant, jobs.JobRequest(task=task, session_id=session, **kw))
        job = run_steps(backends, job.id)
        first = next(r.body for r in scripted_openai.chat_requests if task_of(r.body) == task)
        return job, first["messages"][1]["content"]  # the user message after the system prompt

    first, _ = run("How are checkpoints committed?", "s1")
    assert first.status == "succeeded", first.error
    findings = [c.quote for c in backends.reports.get(first.id).citations]
    assert findings

    clock.now += TTL - 1  # still fresh
    job, seen = run("What happens on redelivery?", "s1")
    recalled = [MemoryItem(text=f, at=clock.now - TTL + 1, job_id=first.id) for f in findings]
    fence = seen.split("between <", 1)[1].split(">", 1)[0]
    assert seen == user_prompt("What happens on redelivery?", recalled, fence=fence)  # fenced, with origin
    assert f'<{fence} origin="finding quoted (verified) by job {first.id} at ' in seen
    assert job.status == "succeeded"
    # Memory belongs to a session of a tenant: another session, or the same id in another tenant, sees nothing.
    assert run("How is the index backed up?", "s2")[1] == "How is the index backed up?"
    assert run("What does the sweep do?", "s1", tenant="acme")[1] == "What does the sweep do?"
    # A job that fails writes nothing to memory.
    failed, _ = run("Which alerts exist?", "s3", policy={"min_citations": 5})
    assert failed.error.reason == "citations_missing"
    assert backends.memory.recall("dev", "s3") == []

    clock.now += TTL + 1  # the first job's findings have expired (the second job's too)
    assert backends.memory.recall("dev", "s1") == []
    assert run("How are failures classified?", "s1")[1] == "How are failures classified?"
