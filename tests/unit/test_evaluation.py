"""Scoring of agentctl eval: each metric on small hand-made reports, and the baseline gate."""

from __future__ import annotations

import pytest

from shared.errors import InvalidRequest
from shared.services import evaluation
from shared.services.evaluation import EvalQuestion, Summary

CHUNK = (
    "## The sweep\n\n"
    "A timer runs the dead-letter sweep every fifteen minutes. Transient causes are re-submitted, "
    "because duplicate detection would drop a reused id. Permanent causes fail the job."
)
TITLE = "Handling the dead-letter queue"


def cite(n: int, quote: str, doc_id: str = "dlq", text: str = CHUNK) -> dict[str, object]:
    start = text.index(quote)
    return {
        "n": n,
        "doc_id": doc_id,
        "chunk_id": 0,
        "title": TITLE,
        "quote": quote,
        "start": start,
        "end": start + len(quote),
    }


def chunks(doc_id: str, chunk_id: int) -> str | None:
    return CHUNK if (doc_id, chunk_id) in {("dlq", 0), ("alerts", 0)} else None


JOB = {"id": "job-1", "status": "succeeded", "usage": {"prompt_tokens": 100, "completion_tokens": 20}}


def test_a_good_report_scores_full_marks() -> None:
    spec = EvalQuestion(
        question="How does the sweep work?", expected_docs=["dlq"], must_include=["fifteen"], language="en"
    )
    q1 = "A timer runs the dead-letter sweep every fifteen minutes."
    q2 = "Permanent causes fail the job."
    report = {
        "markdown": f"## Findings\n\n- {q1} [1]\n- {q2} [2]\n",
        "citations": [cite(1, q1), cite(2, q2)],
        "language": "en",
    }

    r = evaluation.score(spec, JOB, report, chunks, latency_seconds=1.5)

    assert r.succeeded and r.tokens == 120 and r.citations == 2
    assert r.cited_source_hit is True and r.citation_precision == 1.0
    assert r.supported_sentence_share == 1.0
    assert r.verbatim_quote_share == r.whole_sentence_share == 1.0
    assert r.heading_quote_share == 0.0
    assert r.language_match is True and r.must_include_ok is True


def test_fragments_headings_wrong_documents_and_unbacked_sentences_are_counted() -> None:
    spec = EvalQuestion(question="q", expected_docs=["dlq"], must_include=["zebra"], language="ja")
    fragment = "duplicate detection would drop a reused id."  # the tail of a sentence
    heading = "The sweep"
    misplaced = CHUNK.index("A timer")  # offsets that do not hold the quote (nor a whole sentence)
    bad_offsets = dict(cite(3, "Permanent causes fail the job."), start=misplaced, end=misplaced + 30)
    report = {
        "markdown": f"Intro without a source. {fragment} [1]\n\n{heading} [2]. Claim [3].\n",
        "citations": [cite(1, fragment), cite(2, heading, doc_id="alerts"), bad_offsets],
        "language": "en",
    }

    r = evaluation.score(spec, JOB, report, chunks)

    assert r.citation_precision == pytest.approx(2 / 3, abs=1e-3)
    assert r.whole_sentence_share == 0.0
    assert r.heading_quote_share == pytest.approx(1 / 3, abs=1e-3)
    assert r.verbatim_quote_share == pytest.approx(2 / 3, abs=1e-3)  # the third's offsets do not hold its quote
    assert r.supported_sentence_share == pytest.approx(3 / 4)  # "Intro without a source." has no marker
    assert r.language_match is False and r.must_include_missing == ["zebra"]


def test_a_marker_after_the_full_stop_backs_the_sentence_before_it() -> None:
    assert evaluation.supported_share("One claim. [1] Another claim.[2]\n", {1, 2}) == 1.0
    assert evaluation.supported_share("One claim. [1] Another claim.[2]\n", {1}) == 0.5
    assert evaluation.supported_share("## Only a heading\n", {1}) is None


def test_a_failed_job_without_report_scores_what_it_can() -> None:
    job = {"id": "j", "status": "failed", "error": {"reason": "no_report"}, "usage": {}}
    r = evaluation.score(EvalQuestion(question="q", expected_docs=["dlq"]), job, None, chunks)

    assert not r.succeeded and r.error == "no_report" and r.citations == 0
    assert r.cited_source_hit is None and r.citation_precision is None


def test_summary_percentiles_and_shares_over_all_citations() -> None:
    results = [
        evaluation.QuestionResult(
            question="a", status="succeeded", succeeded=True, citations=3, whole_sentence_share=1.0, latency_seconds=1.0
        ),
        evaluation.QuestionResult(
            question="b", status="succeeded", succeeded=True, citations=1, whole_sentence_share=0.0, latency_seconds=3.0
        ),
        evaluation.QuestionResult(question="c", status="failed", succeeded=False, latency_seconds=10.0),
    ]

    s = evaluation.summarize(results)

    assert s.questions == 3 and s.success_rate == pytest.approx(0.6667, abs=1e-4)
    assert s.whole_sentence_share == 0.75  # 3 of 4 citations, not the mean of 1.0 and 0.0
    assert s.latency_p50_seconds == 3.0 and s.latency_p95_seconds == 10.0
    assert s.cited_source_hit_rate is None  # no question had expected documents


def test_regressions_beyond_the_margin_only() -> None:
    baseline = Summary(questions=3, success_rate=1.0, citation_precision=0.8, heading_quote_share=0.0)

    assert (
        evaluation.regressions(
            Summary(questions=3, success_rate=0.96, citation_precision=0.8, heading_quote_share=0.04), baseline
        )
        == []
    )
    found = evaluation.regressions(
        Summary(questions=3, success_rate=0.9, citation_precision=None, heading_quote_share=0.1), baseline
    )

    assert {g.metric for g in found} == {"success_rate", "citation_precision", "heading_quote_share"}


def test_question_files_are_validated_line_by_line() -> None:
    good = ['{"question": "a"}', "", "// a comment", '{"question": "b", "language": "ja"}']
    assert [q.question for q in evaluation.parse_questions(good)] == ["a", "b"]
    with pytest.raises(InvalidRequest, match="line 2"):
        evaluation.parse_questions(['{"question": "a"}', '{"question": "b", "language": "fr"}'])
    with pytest.raises(InvalidRequest, match="no questions"):
        evaluation.parse_questions(["", "// nothing"])


def test_cost_comes_from_the_job_view_and_is_summed_only_when_priced() -> None:
    priced = {**JOB, "cost": {"amount": 0.25, "currency": "EUR", "model": "m"}}
    spec = EvalQuestion(question="q")

    results = [evaluation.score(spec, priced, None, chunks), evaluation.score(spec, priced, None, chunks)]

    assert results[0].cost == 0.25 and results[0].currency == "EUR"
    summary = evaluation.summarize(results)
    assert summary.cost == 0.5 and summary.currency == "EUR" and summary.tokens == 240
    assert evaluation.summarize([evaluation.score(spec, JOB, None, chunks)]).cost is None
