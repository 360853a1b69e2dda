"""agentctl eval's runner and scoring over the API, with the offline model, on the shipped question set.

The figures are held to eval/baseline.json (committed): a change that makes the offline model's
reports worse on the samples fails here, the same way `agentctl eval --baseline` fails a CI run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from shared.cli.evaluate import run_eval
from shared.engine.backends import Backends
from shared.runtime.consumer import QueueConsumer
from shared.runtime.functions import discover
from shared.services import evaluation
from shared.services.evaluation import EvalRun
from tests.fixtures.app import ROOT, ingest_samples

QUESTIONS = ROOT / "eval" / "questions.jsonl"
BASELINE = ROOT / "eval" / "baseline.json"


@pytest.fixture
def worker(backends: Backends) -> Iterator[None]:
    """The app's queue function working the embedded queue, as the runtime would."""
    consumer = QueueConsumer(
        backends.queue,  # type: ignore[arg-type]
        discover("function_app").queues[0],
        concurrency=2,
        max_lock_renewal_seconds=30,
    )
    consumer.start()
    yield
    consumer.stop()


def run_shipped_set(api: TestClient, backends: Backends) -> EvalRun:
    ingest_samples(backends)
    questions = evaluation.parse_questions(QUESTIONS.read_text(encoding="utf-8").splitlines())
    return run_eval(api, questions, target="embedded", timeout=120, poll_seconds=0.05)


def test_the_shipped_question_set_holds_the_committed_baseline(
    api: TestClient, backends: Backends, worker: None
) -> None:
    run = run_shipped_set(api, backends)
    baseline = evaluation.Summary.model_validate(json.loads(BASELINE.read_text(encoding="utf-8"))["summary"])

    assert run.summary.questions == baseline.questions == 11
    assert run.model == "offline-extractive"
    assert evaluation.regressions(run.summary, baseline) == []
    # What the offline model must keep doing, whatever the baseline says.
    assert run.summary.success_rate == 1.0
    assert run.summary.verbatim_quote_share == 1.0
    assert run.summary.heading_quote_share == 0.0
    assert run.summary.language_match_rate == 1.0
    assert all(r.tokens > 0 and r.latency_seconds >= 0 for r in run.results)
    page = evaluation.render_markdown(run, [])
    assert "No regression beyond the margin." in page and page.count("\n| ") >= 11 + 14
