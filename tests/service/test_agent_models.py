"""The research agent on a real model API: the scripted OpenAI-compatible server on loopback plays
the model, the real openai SDK talks to it, and jobs run through the step engine.

What is asserted is what a model provider would see (the requests) and what a caller gets (job,
report, ledger): verified citations, errors classified, usage counted once, prompts within budget.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from agents.research import ELIDED
from shared.contracts import Document, Usage
from shared.engine.backends import Backends
from shared.engine.ledger import month_of
from shared.services import jobs
from shared.services.knowledge import index_documents
from shared.tokens import count_message_tokens
from tests.fixtures.agent_scripts import (
    SCRIPTED_ENV,
    ByTask,
    Researcher,
    assert_verified,
    call,
    cite,
    consume,
    quote_from,
    run_steps,
    sentences,
    write_report,
)
from tests.fixtures.app import ingest_samples
from tests.fixtures.scripted_openai import ScriptedOpenAI, completion, content_filter_error, error

TASK = "How does the step engine keep jobs durable?"
ALL_TOOLS = ["search_knowledge", "read_document", "save_note", "write_report"]


@pytest.fixture
def model_env(app_env: dict[str, str], scripted_openai: ScriptedOpenAI) -> dict[str, str]:
    """The app pointed at the scripted server, as an operator would point it at Ollama or vLLM."""
    app_env.update({"OPENAI_BASE_URL": scripted_openai.base_url, **SCRIPTED_ENV})
    return app_env


def submit(b: Backends, task: str = TASK, **kw: Any) -> Any:
    job, _ = jobs.submit(b, "dev", jobs.JobRequest(task=task, **kw))
    return job


def last_tool_answer(request: Any) -> dict[str, Any]:
    message = request.body["messages"][-1]
    assert message["role"] == "tool"
    return json.loads(message["content"])


# --- a job, start to finish --------------------------------------------------------------------


def test_multi_turn_tool_calling_job_ends_in_a_verified_report(
    model_env: dict[str, str], backends: Backends, api: TestClient, scripted_openai: ScriptedOpenAI
) -> None:
    ingest_samples(backends)
    q1, q2 = quote_from(backends, "step-engine", 0), quote_from(backends, "step-engine", 1)
    searches = [call("search_knowledge", query="step engine checkpoints"), call("search_knowledge", query="redelivery")]
    scripted_openai.script(
        [
            completion(tool_calls=searches, prompt_tokens=300, completion_tokens=30),
            completion(
                tool_calls=[
                    call("read_document", doc_id="step-engine", chunk_id=0),
                    call("read_document", doc_id="step-engine", chunk_id=1),
                ],
                prompt_tokens=700,
                completion_tokens=40,
            ),
            completion(
                tool_calls=[
                    write_report(
                        "Jobs run one step per message [1]. Delivery is at least once [2].\n",
                        [cite(1, "step-engine", 0, q1), cite(2, "step-engine", 1, q2)],
                    )
                ],
                prompt_tokens=1500,
                completion_tokens=120,
            ),
        ]
    )

    created = api.post("/api/jobs", json={"task": TASK})
    [job] = consume(backends, [created.json()["id"]])

    assert job.status == "succeeded", job.error
    first, second, third = scripted_openai.chat_requests
    assert first.body["model"] == "scripted"
    assert [t["function"]["name"] for t in first.body["tools"]] == ALL_TOOLS
    assert [m["role"] for m in first.body["messages"]] == ["system", "user"]
    assert first.body["messages"][1]["content"] == TASK
    # Both parallel calls are answered, each by its own id, before the next turn.
    answers = [m for m in second.body["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in answers] == [c["id"] for c in searches]
    assert all("results" in json.loads(m["content"]) for m in answers)
    assert len([m for m in third.body["messages"] if m["role"] == "tool"]) == 4

    report = api.get(f"/api/jobs/{job.id}/report").json()
    assert report["status"] == "succeeded" and report["language"] == "en"
    assert (report["model"], report["offline_model"]) == ("openai-compatible:scripted", False)
    assert [c["quote"] for c in report["citations"]] == [q1, q2]
    assert_verified(backends, report["citations"])
    assert set(re.findall(r"\[(\d+)\]", report["markdown"])) == {"1", "2"}

    # Usage: per step in the committed checkpoint, summed on the job, set once in the month's ledger.
    per_step = [backends.checkpoints.get(job.id, n).usage for n in range(1, job.step + 1)]
    assert [u.total_tokens for u in per_step] == [330, 0, 740, 0, 1620, 0]
    assert job.usage == Usage(prompt_tokens=2500, completion_tokens=190)
    assert backends.checkpoints.get(job.id, job.step).total_usage == job.usage
    assert backends.ledger.by_job("dev", month_of(job.created_at)) == {job.id: job.usage}
    assert [p.tokens for p in job.progress] == [330, 0, 740, 0, 1620, 0]


def test_japanese_question_gets_a_japanese_report_from_the_model(
    model_env: dict[str, str], backends: Backends, scripted_openai: ScriptedOpenAI
) -> None:
    ingest_samples(backends)
    scripted_openai.respond_with(Researcher(reads=1))
    question = "ジョブが完了しないときはどうすればよいですか?"

    [job] = consume(backends, [submit(backends, question).id])

    assert job.status == "succeeded", job.error
    report = backends.reports.get(job.id)
    assert report.language == "ja" and not report.offline_model
    assert_verified(backends, report.citations)
    assert {c.doc_id for c in report.citations} == {"unyou-gaiyou-ja"}
    assert re.search("[\u3040-\u30ff\u4e00-\u9fff]", report.markdown)
    first = scripted_openai.chat_requests[0].body
    assert "Japanese (日本語)" in first["messages"][0]["content"]
    search = scripted_openai.chat_requests[1].body["messages"][2]["tool_calls"][0]["function"]
    assert json.loads(search["arguments"])["query"] == question


def test_japanese_question_gets_a_japanese_report_from_the_offline_model(backends: Backends) -> None:
    ingest_samples(backends)
    [job] = consume(backends, [submit(backends, "バックアップの検証が一致しない場合はどうなりますか?").id])
    assert job.status == "succeeded", job.error
    report = backends.reports.get(job.id)
    assert report.language == "ja" and report.offline_model
    assert report.markdown.startswith("## 調査結果")
    assert_verified(backends, report.citations)
    assert all(c.doc_id == "unyou-gaiyou-ja" for c in report.citations)


# --- citations ---------------------------------------------------------------------------------


def test_forged_citation_is_repaired_in_one_turn(
    model_env: dict[str, str], backends: Backends, scripted_openai: ScriptedOpenAI
) -> None:
    ingest_samples(backends)
    real = quote_from(backends, "step-engine", 2)
    forged = "Transient failures are retried forever, without any backoff."
    scripted_openai.script(
        [
            completion(tool_calls=[call("read_document", doc_id="step-engine", chunk_id=2)]),
            completion(
                tool_calls=[write_report("Transient failures are retried [1].\n", [cite(1, "step-engine", 2, forged)])]
            ),
            completion(
                tool_calls=[write_report("Transient failures are retried [1].\n", [cite(1, "step-engine", 2, real)])]
            ),
        ]
    )

    job = run_steps(backends, submit(backends).id)

    assert job.status == "succeeded", job.error
    requests = scripted_openai.chat_requests
    assert len(requests) == 3
    feedback = last_tool_answer(requests[2])
    assert [f["why"] for f in feedback["failed"]] == ["quote does not occur in chunk step-engine--c0002"]
    report = backends.reports.get(job.id)
    assert [c.quote for c in report.citations] == [real] and report.removed_citations == []
    assert_verified(backends, report.citations)


def test_forged_citation_left_unrepaired_is_removed_and_reported(
    model_env: dict[str, str], backends: Backends, api: TestClient, scripted_openai: ScriptedOpenAI
) -> None:
    ingest_samples(backends)
    real = quote_from(backends, "step-engine", 2)
    unread = quote_from(backends, "dead-letter-queue", 0)  # true text, but of a chunk this job never read
    markdown = "Failures are classified [1]. Dead letters keep a reason [2]. Nothing is ever lost [3].\n"
    citations = [
        cite(1, "step-engine", 2, real),
        cite(2, "dead-letter-queue", 0, unread),
        cite(3, "step-engine", 2, "Nothing is ever lost, guaranteed."),
    ]
    scripted_openai.script(
        [
            completion(tool_calls=[call("read_document", doc_id="step-engine", chunk_id=2)]),
            completion(tool_calls=[write_report(markdown, citations)]),
            completion(tool_calls=[write_report(markdown, citations)]),  # the model does not fix it
        ]
    )

    job = run_steps(backends, submit(backends).id)

    assert job.status == "succeeded", job.error  # one verified citation meets min_citations=1
    assert len(scripted_openai.chat_requests) == 3  # exactly one repair turn
    report = api.get(f"/api/jobs/{job.id}/report").json()
    assert [c["quote"] for c in report["citations"]] == [real]
    assert "[2]" not in report["markdown"] and "[3]" not in report["markdown"]
    assert sorted(r["why"] for r in report["removed_citations"]) == [
        "chunk dead-letter-queue--c0000 was not read in this job",
        "quote does not occur in chunk step-engine--c0002",
    ]
    assert "2 removed" in job.progress[-1].summary


def test_citations_missing_fails_the_job_and_keeps_the_report(
    model_env: dict[str, str], backends: Backends, api: TestClient, scripted_openai: ScriptedOpenAI
) -> None:
    ingest_samples(backends)
    real = quote_from(backends, "step-engine", 2)
    markdown = "Failures are classified [1]. Retries are unlimited [2].\n"
    citations = [cite(1, "step-engine", 2, real), cite(2, "step-engine", 2, "Retries are unlimited.")]
    scripted_openai.script(
        [
            completion(tool_calls=[call("read_document", doc_id="step-engine", chunk_id=2)]),
            completion(tool_calls=[write_report(markdown, citations)]),
            completion(tool_calls=[write_report(markdown, citations)]),
        ]
    )
    created = api.post("/api/jobs", json={"task": TASK, "policy": {"require_citations": True, "min_citations": 2}})

    job = run_steps(backends, created.json()["id"])

    assert (job.status, job.error.reason) == ("failed", "citations_missing")
    assert "1 verified citation(s), policy requires 2" in job.error.detail
    report = api.get(f"/api/jobs/{job.id}/report").json()  # kept for inspection
    assert report["status"] == "failed" and report["error"]["reason"] == "citations_missing"
    assert [c["quote"] for c in report["citations"]] == [real]
    assert len(report["removed_citations"]) == 1


def test_report_over_max_report_chars_is_cut_between_claims(
    model_env: dict[str, str], backends: Backends, scripted_openai: ScriptedOpenAI
) -> None:
    ingest_samples(backends)
    quotes = sentences(backends.index.get_chunks("step-engine", 2)[0].content)[:4]
    lines = [f"- Point {n}: {q} [{n}]" for n, q in enumerate(quotes, start=1)]
    scripted_openai.script(
        [
            completion(tool_calls=[call("read_document", doc_id="step-engine", chunk_id=2)]),
            completion(
                tool_calls=[
                    write_report(
                        "\n".join(lines) + "\n", [cite(n, "step-engine", 2, q) for n, q in enumerate(quotes, start=1)]
                    )
                ]
            ),
        ]
    )

    job = run_steps(backends, submit(backends, policy={"max_report_chars": 200}).id)

    assert job.status == "succeeded", job.error
    report = backends.reports.get(job.id)
    assert len(report.markdown) <= 200
    kept = [line for line in report.markdown.splitlines() if line]
    assert kept and all(line in lines for line in kept)  # whole claims only, each with its marker
    assert {int(n) for n in re.findall(r"\[(\d+)\]", report.markdown)} == {c.n for c in report.citations}
    assert len(report.citations) == len(kept) < len(quotes)


# --- model errors ------------------------------------------------------------------------------

SLOW, FAST = "What does the dead-letter sweep do?", "How are checkpoints committed?"


def test_429_retry_after_reschedules_the_step_and_frees_the_worker(
    model_env: dict[str, str], backends: Backends, scripted_openai: ScriptedOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.steps")
    ingest_samples(backends)
    rate_limited = error(429, "Rate limit reached", code="rate_limit_exceeded", headers={"Retry-After": "1"})
    answers = ByTask({SLOW: [rate_limited]}, Researcher(usage=(100, 10)))
    scripted_openai.respond_with(answers)
    slow, fast = submit(backends, SLOW), submit(backends, FAST)

    finished = consume(backends, [slow.id, fast.id], concurrency=1)  # one worker for both jobs

    assert [j.status for j in finished] == ["succeeded", "succeeded"]
    [(limited_at, _, _)] = [e for e in answers.log if e[1] == SLOW and e[2] == 429]
    retried_at = min(t for t, task, status in answers.log if task == SLOW and t > limited_at)
    assert retried_at - limited_at >= 0.95  # Retry-After honoured
    # Meanwhile the single worker ran the other job's steps instead of sleeping out the wait.
    assert any(limited_at < t < retried_at for t, task, _ in answers.log if task == FAST)
    slow_job = finished[0]
    assert backends.checkpoints.steps(slow.id) == list(range(1, slow_job.step + 1))
    assert backends.checkpoints.get(slow.id, 1).usage == Usage(prompt_tokens=100, completion_tokens=10)
    assert [r for r in caplog.records if getattr(r, "event", None) == "step_rescheduled"]


def test_5xx_is_retried_with_backoff(
    model_env: dict[str, str], backends: Backends, scripted_openai: ScriptedOpenAI
) -> None:
    ingest_samples(backends)
    scripted_openai.script([error(503, "overloaded"), error(500, "oops")])
    scripted_openai.respond_with(Researcher())

    [job] = consume(backends, [submit(backends).id], concurrency=1)

    assert job.status == "succeeded", job.error
    assert len(scripted_openai.chat_requests) == 2 + 3  # two failures, then search, read, write_report
    assert backends.checkpoints.steps(job.id) == list(range(1, job.step + 1))


def test_content_filter_fails_the_job_once_without_spending_more(
    model_env: dict[str, str], backends: Backends, scripted_openai: ScriptedOpenAI
) -> None:
    ingest_samples(backends)
    scripted_openai.script(
        [
            completion(
                tool_calls=[call("search_knowledge", query="durable jobs")], prompt_tokens=50, completion_tokens=5
            ),
            content_filter_error(),
        ]
    )

    [job] = consume(backends, [submit(backends).id])

    assert (job.status, job.error.reason) == ("failed", "content_filter")
    assert "content filter" in job.error.detail
    assert len(scripted_openai.chat_requests) == 2  # one request for the filtered step, no retry
    assert job.usage == Usage(prompt_tokens=50, completion_tokens=5)
    assert backends.ledger.total("dev", month_of(job.created_at)) == job.usage
    counts = backends.queue.counts()
    assert (counts.active, counts.scheduled, counts.dead_lettered) == (0, 0, 0)


def test_insufficient_quota_fails_the_job_with_model_quota(
    model_env: dict[str, str], backends: Backends, scripted_openai: ScriptedOpenAI
) -> None:
    scripted_openai.script([error(429, "You exceeded your current quota", code="insufficient_quota")])
    [job] = consume(backends, [submit(backends).id])
    assert (job.status, job.error.reason) == ("failed", "model_quota")
    assert len(scripted_openai.chat_requests) == 1


# --- usage -------------------------------------------------------------------------------------


def test_redelivered_steps_count_usage_exactly_once(
    model_env: dict[str, str], backends: Backends, scripted_openai: ScriptedOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.steps")
    ingest_samples(backends)
    real = quote_from(backends, "step-engine", 1)
    scripted_openai.script(
        [
            completion(
                tool_calls=[call("search_knowledge", query="redelivery")], prompt_tokens=111, completion_tokens=11
            ),
            completion(
                tool_calls=[call("read_document", doc_id="step-engine", chunk_id=1)],
                prompt_tokens=222,
                completion_tokens=22,
            ),
            completion(
                tool_calls=[write_report("At least once [1].\n", [cite(1, "step-engine", 1, real)])],
                prompt_tokens=333,
                completion_tokens=33,
            ),
        ]
    )

    job = run_steps(backends, submit(backends).id, deliveries=2)  # the broker delivers every step twice
    run_steps(backends, job.id, deliveries=1)  # and the finished job's next step once more

    expected = Usage(prompt_tokens=666, completion_tokens=66)
    assert job.status == "succeeded", job.error
    assert len(scripted_openai.chat_requests) == 3  # a committed step never calls the model again
    month = month_of(job.created_at)
    assert backends.jobs.get(job.id).usage == expected
    assert backends.ledger.total("dev", month) == expected
    assert backends.ledger.tenants(month) == {"dev": expected}
    events = [r for r in caplog.records if getattr(r, "event", None) == "tokens"]
    assert [(r.tenant, r.tokens) for r in events] == [("dev", 122), ("dev", 244), ("dev", 366)]


# --- prompt budget -----------------------------------------------------------------------------

NOTE = (
    "Operations note {i} describes runbook entry {i} in detail. The on-call engineer for entry {i} checks the "
    "queue depth, the dead-letter count and the error rate before acting. Entry {i} applies to the staging and "
    "production environments alike, and its checks are repeated after every deployment. When entry {i} fires "
    "twice in one hour, the engineer opens an incident and records the timeline. The incident owner for entry "
    "{i} confirms the fix with a test job and closes the incident only after the job succeeds with citations."
)


@pytest.fixture
def small_context(app_env: dict[str, str]) -> int:
    app_env["CONTEXT_BUDGET_TOKENS"] = "1500"
    return 1500


def test_a_30_step_job_never_sends_more_than_the_context_budget(
    model_env: dict[str, str], small_context: int, backends: Backends, scripted_openai: ScriptedOpenAI
) -> None:
    index_documents(
        backends,
        [Document(id=f"ops-note-{i}", title=f"Operations note {i}", content=NOTE.format(i=i)) for i in range(13)],
    )
    quote = sentences(NOTE.format(i=0))[1]
    scripted_openai.script(
        [
            completion(tool_calls=[call("search_knowledge", query="operations notes")]),
            *[completion(tool_calls=[call("read_document", doc_id=f"ops-note-{i}")]) for i in range(13)],
            completion(
                tool_calls=[
                    write_report("The on-call engineer checks three signals [1].\n", [cite(1, "ops-note-0", 0, quote)])
                ]
            ),
        ]
    )

    job = run_steps(backends, submit(backends).id)

    assert (job.status, job.step) == ("succeeded", 30), job.error
    requests = scripted_openai.chat_requests
    assert len(requests) == 15
    for r in requests:
        assert count_message_tokens(r.body["messages"], tools=r.body["tools"]) <= small_context
    # Without elision the conversation would not have fitted: the budget was really at work.
    state = backends.checkpoints.get(job.id, job.step).state
    assert count_message_tokens(state["messages"]) > small_context
    original = {m["tool_call_id"]: m["content"] for m in state["messages"] if m["role"] == "tool"}
    elided = 0
    for r in requests:
        messages = r.body["messages"]
        last_turn = max(i for i, m in enumerate(messages) if m["role"] == "assistant") if len(messages) > 2 else 0
        for i, m in enumerate(messages):
            if m["role"] != "tool":
                continue
            if m["content"] == ELIDED:  # replaced whole ...
                assert i < last_turn  # ... and never an answer the model has yet to act on
                elided += 1
            else:  # ... or sent whole: never cut mid-chunk, mid-quote
                assert m["content"] == original[m["tool_call_id"]]
    assert elided > 0
    report = backends.reports.get(job.id)
    assert [c.quote for c in report.citations] == [quote]  # cited from a read whose output was later elided


@pytest.fixture
def tiny_context(app_env: dict[str, str]) -> None:
    app_env["CONTEXT_BUDGET_TOKENS"] = "300"  # less than the system prompt and tool specs alone


def test_a_prompt_that_cannot_fit_fails_before_calling_the_model(
    model_env: dict[str, str], tiny_context: None, backends: Backends, scripted_openai: ScriptedOpenAI
) -> None:
    job = run_steps(backends, submit(backends).id)
    assert (job.status, job.error.reason) == ("failed", "context_budget")
    assert "CONTEXT_BUDGET_TOKENS is 300" in job.error.detail
    assert scripted_openai.chat_requests == [] and job.usage == Usage()


# --- concurrency -------------------------------------------------------------------------------


@pytest.fixture(params=[1, 3], ids=["limit-1", "limit-3"])
def concurrency_limit(request: pytest.FixtureRequest, app_env: dict[str, str]) -> int:
    app_env["MAX_CONCURRENT_JOBS"] = str(request.param)
    return int(request.param)


def test_max_concurrent_jobs_bounds_the_steps_running_at_once(
    model_env: dict[str, str], concurrency_limit: int, backends: Backends, scripted_openai: ScriptedOpenAI
) -> None:
    ingest_samples(backends)
    researcher = Researcher(reads=1, think=0.15)
    scripted_openai.respond_with(researcher)
    tasks = ["How are checkpoints committed?", "What does the sweep do?", "How is the index backed up?"]
    ids = [submit(backends, t).id for t in tasks]

    finished = consume(backends, ids, concurrency=3, timeout=60)  # three workers, whatever the limit

    assert [j.status for j in finished] == ["succeeded"] * 3
    if concurrency_limit == 1:
        assert researcher.max_in_flight == 1
    else:
        assert researcher.max_in_flight >= 2  # the same setup does overlap when allowed to
