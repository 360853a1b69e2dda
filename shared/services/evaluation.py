"""Answer quality, measured on the product's own data: verified citations, scored per question and overall.

`agentctl eval` runs a question set as ordinary jobs and hands each finished job here with its report
and the chunks its citations point at. Scoring needs nothing else, so the same figures come out
against the embedded runtime and a deployed app, and a run can be compared with a committed baseline.

A question (one JSON line):

    {"question": "...", "expected_docs": ["dead-letter-queue"], "must_include": ["sweep"], "language": "en"}

Only `question` is required; a metric whose input is missing (no expected_docs, no citations) is
None for that question and left out of the averages, never counted as 0 or 1.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from shared.errors import InvalidRequest
from shared.text import split_sentences

_MARKER_RE = re.compile(r"\[(\d+)\]")
_LEADING_MARKERS_RE = re.compile(r"^(?:\s*\[\d+\])+")
_LIST_PREFIX_RE = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")

# Higher is better for these; a baseline comparison flags a drop of more than the margin.
QUALITY_METRICS = (
    "success_rate",
    "cited_source_hit_rate",
    "citation_precision",
    "supported_sentence_share",
    "verbatim_quote_share",
    "whole_sentence_share",
    "language_match_rate",
    "must_include_rate",
)
# Lower is better: a rise of more than the margin is a regression.
LOWER_IS_BETTER = ("heading_quote_share",)
DEFAULT_MARGIN = 0.05
_SENTENCE_ENDS = (".", "!", "?", "\u3002", "\uff01", "\uff1f")
_CLOSERS = "\"')]\u300d\u300f\uff09\u201d\u2019"


class EvalQuestion(BaseModel):
    question: str = Field(min_length=1, max_length=4000)
    expected_docs: list[str] = Field(default_factory=list, description="Documents a good answer cites.")
    must_include: list[str] = Field(default_factory=list, description="Phrases the report must contain.")
    language: Literal["en", "ja"] | None = Field(None, description="The language the report must be in.")


class QuestionResult(BaseModel):
    question: str
    job_id: str | None = None
    status: str
    error: str | None = Field(None, description="The job's failure reason, or why it could not be run.")
    succeeded: bool
    citations: int = 0
    cited_source_hit: bool | None = Field(None, description="Any citation from an expected document.")
    citation_precision: float | None = Field(None, description="Share of citations from expected documents.")
    supported_sentence_share: float | None = Field(
        None, description="Share of the report's sentences carrying a marker of a verified citation."
    )
    verbatim_quote_share: float | None = Field(None, description="Share of quotes found verbatim at their offsets.")
    whole_sentence_share: float | None = Field(None, description="Share of quotes that are whole sentences.")
    heading_quote_share: float | None = Field(None, description="Share of quotes that are headings or titles.")
    language: str | None = None
    language_match: bool | None = None
    must_include_missing: list[str] = Field(default_factory=list)
    must_include_ok: bool | None = None
    latency_seconds: float = 0.0
    tokens: int = 0
    cost: float | None = None
    currency: str | None = None


class Summary(BaseModel):
    questions: int
    success_rate: float | None = None
    cited_source_hit_rate: float | None = None
    citation_precision: float | None = None
    supported_sentence_share: float | None = None
    verbatim_quote_share: float | None = None
    whole_sentence_share: float | None = None
    heading_quote_share: float | None = None
    language_match_rate: float | None = None
    must_include_rate: float | None = None
    latency_p50_seconds: float = 0.0
    latency_p95_seconds: float = 0.0
    tokens: int = 0
    cost: float | None = None
    currency: str | None = None


class EvalRun(BaseModel):
    target: str = Field(description="Where the jobs ran: a URL.")
    model: str | None = Field(None, description="The model the reports name.")
    summary: Summary
    results: list[QuestionResult]


class Regression(BaseModel):
    metric: str
    baseline: float
    current: float | None
    margin: float


# --- the question set ------------------------------------------------------------------------------


def parse_questions(lines: Iterable[str]) -> list[EvalQuestion]:
    """The questions of a JSON-lines file (blank lines and lines starting with // skipped)."""
    out: list[EvalQuestion] = []
    for n, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("//"):
            continue
        try:
            out.append(EvalQuestion.model_validate(json.loads(text)))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise InvalidRequest(f"question file line {n}: {str(exc).splitlines()[0]}") from exc
    if not out:
        raise InvalidRequest("the question file has no questions")
    return out


# --- one question ----------------------------------------------------------------------------------


def score(
    spec: EvalQuestion,
    job: dict[str, Any] | None,
    report: dict[str, Any] | None,
    chunk_text: Callable[[str, int], str | None],
    *,
    latency_seconds: float = 0.0,
    error: str | None = None,
) -> QuestionResult:
    """Score one finished job (its API view) and its report; chunk_text(doc_id, chunk_id) gives the cited text."""
    job = job or {}
    status = str(job.get("status") or "not_run")
    usage = job.get("usage") or {}
    result = QuestionResult(
        question=spec.question,
        job_id=job.get("id"),
        status=status,
        error=error or ((job.get("error") or {}).get("reason")),
        succeeded=status == "succeeded",
        latency_seconds=round(latency_seconds, 3),
        tokens=int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0),
        cost=(job.get("cost") or {}).get("amount"),
        currency=(job.get("cost") or {}).get("currency"),
    )
    if report is None:
        return result
    citations = list(report.get("citations") or [])
    markdown = str(report.get("markdown") or "")
    result.citations = len(citations)
    result.language = report.get("language")
    if spec.language:
        result.language_match = result.language == spec.language
    if spec.must_include:
        folded = markdown.casefold()
        result.must_include_missing = [p for p in spec.must_include if p.casefold() not in folded]
        result.must_include_ok = not result.must_include_missing
    if spec.expected_docs and citations:
        from_expected = [c for c in citations if c.get("doc_id") in spec.expected_docs]
        result.cited_source_hit = bool(from_expected)
        result.citation_precision = round(len(from_expected) / len(citations), 4)
    elif spec.expected_docs:
        result.cited_source_hit = False
    result.supported_sentence_share = supported_share(markdown, {int(c["n"]) for c in citations if "n" in c})
    if citations:
        verbatim = whole = heading = 0
        for c in citations:
            text = chunk_text(str(c.get("doc_id")), int(c.get("chunk_id", -1)))
            quote, start, end = str(c.get("quote") or ""), int(c.get("start", -1)), int(c.get("end", -1))
            if text is None:
                continue
            verbatim += text[start:end] == quote and bool(quote)
            whole += is_whole_sentence(text, start, end)
            heading += is_heading(text, start, end, str(c.get("title") or ""))
        n = len(citations)
        result.verbatim_quote_share = round(verbatim / n, 4)
        result.whole_sentence_share = round(whole / n, 4)
        result.heading_quote_share = round(heading / n, 4)
    return result


def _only_markers(sentence: str) -> bool:
    return not _MARKER_RE.sub("", sentence).strip(" .。")


def supported_share(markdown: str, verified: set[int]) -> float | None:
    """Share of the report's sentences carrying at least one marker [n] of a verified citation.

    A marker often follows the sentence's full stop ("... retried. [1]"): the sentence splitter puts
    it at the start of the next piece, so markers leading a piece count for the sentence before.
    """
    sentences: list[set[int]] = []
    for line in markdown.splitlines():
        if not line.strip() or line.lstrip().startswith(("#", "|", ">", "```")):
            continue
        body = _LIST_PREFIX_RE.sub("", line)
        for a, b in split_sentences(body):
            piece = body[a:b].strip()
            leading = _LEADING_MARKERS_RE.match(piece)
            if leading and sentences:
                sentences[-1] |= {int(m) for m in _MARKER_RE.findall(leading.group())}
                piece = piece[leading.end() :].strip()
            if _only_markers(piece):
                continue
            sentences.append({int(m) for m in _MARKER_RE.findall(piece)})
    if not sentences:
        return None
    backed = sum(1 for markers in sentences if markers & verified)
    return round(backed / len(sentences), 4)


def is_whole_sentence(text: str, start: int, end: int) -> bool:
    """Whether text[start:end] is one or more whole sentences of text: it starts where the sentence
    splitter starts one, ends where it ends one, with a full stop (or ? ! 。), and does not start in
    lower case (the tail of a sentence a chunk boundary cut)."""
    if not 0 <= start < end <= len(text):
        return False
    spans = split_sentences(text)
    if start not in {a for a, _ in spans} or end not in {b for _, b in spans}:
        return False
    quote = text[start:end]
    return quote.rstrip(_CLOSERS).endswith(_SENTENCE_ENDS) and not quote[0].islower()


def is_heading(text: str, start: int, end: int, title: str = "") -> bool:
    """Whether the quote is (part of) a Markdown heading line, or the document's title."""
    if not 0 <= start < end <= len(text):
        return False
    line_start = text.rfind("\n", 0, start) + 1
    if text[line_start:start].lstrip().startswith("#") or text[start:end].lstrip().startswith("#"):
        return True
    return bool(title) and text[start:end].strip().casefold() == title.strip().casefold()


# --- the run ---------------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _mean(values: Iterable[float | bool | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return round(sum(present) / len(present), 4) if present else None


def summarize(results: list[QuestionResult]) -> Summary:
    """The run's figures. Quote shares are over all citations of the run, not averaged per question."""
    latencies = [r.latency_seconds for r in results if r.status != "not_run"]
    cited = [r for r in results if r.citations]

    def over_citations(field: str) -> float | None:
        shares = [(float(share), r.citations) for r in cited if (share := getattr(r, field)) is not None]
        n = sum(count for _, count in shares)
        if not n:
            return None
        return round(sum(share * count for share, count in shares) / n, 4)

    costs = [r.cost for r in results if r.cost is not None]
    return Summary(
        questions=len(results),
        success_rate=_mean(r.succeeded for r in results),
        cited_source_hit_rate=_mean(r.cited_source_hit for r in results),
        citation_precision=_mean(r.citation_precision for r in results),
        supported_sentence_share=_mean(r.supported_sentence_share for r in results),
        verbatim_quote_share=over_citations("verbatim_quote_share"),
        whole_sentence_share=over_citations("whole_sentence_share"),
        heading_quote_share=over_citations("heading_quote_share"),
        language_match_rate=_mean(r.language_match for r in results),
        must_include_rate=_mean(r.must_include_ok for r in results),
        latency_p50_seconds=round(percentile(latencies, 50), 3),
        latency_p95_seconds=round(percentile(latencies, 95), 3),
        tokens=sum(r.tokens for r in results),
        cost=round(sum(costs), 6) if costs else None,
        currency=next((r.currency for r in results if r.currency), None) if costs else None,
    )


def regressions(current: Summary, baseline: Summary, margin: float = DEFAULT_MARGIN) -> list[Regression]:
    """The quality figures that got worse than the baseline by more than margin (absolute, on 0..1 shares).

    Latency, tokens and cost are reported but not gated: they depend on the machine and the model's
    mood more than on the code, and a CI gate that flaps is soon ignored.
    """
    found: list[Regression] = []
    for metric in (*QUALITY_METRICS, *LOWER_IS_BETTER):
        before = getattr(baseline, metric)
        if before is None:
            continue
        now = getattr(current, metric)
        worse = now is None or (now > before + margin if metric in LOWER_IS_BETTER else now < before - margin)
        if worse:
            found.append(Regression(metric=metric, baseline=before, current=now, margin=margin))
    return found


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def render_markdown(run: EvalRun, found: list[Regression] | None = None) -> str:
    """The run as a Markdown page: overall figures, then one row per question."""
    s = run.summary
    cost = "n/a" if s.cost is None else f"{s.cost:.4f} {s.currency or ''}".strip()
    lines = [
        f"# Evaluation: {s.questions} question(s) against {run.target}",
        "",
        f"Model: {run.model or 'unknown'}",
        "",
        "| metric | value |",
        "|---|---|",
        f"| job success | {_pct(s.success_rate)} |",
        f"| cited-source hit | {_pct(s.cited_source_hit_rate)} |",
        f"| citation precision | {_pct(s.citation_precision)} |",
        f"| report sentences backed by a verified citation | {_pct(s.supported_sentence_share)} |",
        f"| quotes verbatim in their chunk | {_pct(s.verbatim_quote_share)} |",
        f"| quotes that are whole sentences | {_pct(s.whole_sentence_share)} |",
        f"| quotes that are headings | {_pct(s.heading_quote_share)} |",
        f"| report language as expected | {_pct(s.language_match_rate)} |",
        f"| must-include phrases present | {_pct(s.must_include_rate)} |",
        f"| latency p50 / p95 | {s.latency_p50_seconds:.2f} s / {s.latency_p95_seconds:.2f} s |",
        f"| tokens | {s.tokens} |",
        f"| cost | {cost} |",
        "",
        "| # | question | status | cites | hit | precision | backed | whole | lang | tokens | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(run.results, 1):
        hit = "n/a" if r.cited_source_hit is None else ("yes" if r.cited_source_hit else "no")
        status = r.status + (f" ({r.error})" if r.error else "")
        question = r.question.replace("|", "\\|")
        lines.append(
            f"| {i} | {question} | {status} | {r.citations} | {hit} | {_pct(r.citation_precision)} | "
            f"{_pct(r.supported_sentence_share)} | {_pct(r.whole_sentence_share)} | {r.language or ''} | "
            f"{r.tokens} | {r.latency_seconds:.2f} |"
        )
    if found is not None:
        lines += ["", "## Against the baseline", ""]
        if not found:
            lines.append("No regression beyond the margin.")
        for g in found:
            lines.append(
                f"- **{g.metric}** regressed: {_pct(g.current)} against {_pct(g.baseline)} (margin {g.margin:g})"
            )
    return "\n".join(lines) + "\n"
