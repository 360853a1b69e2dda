"""The offline extractive model: deterministic, no network, speaking the ChatModel port.

It drives the same agent loop a real model does (search, read, write_report with
citations), choosing each turn from the conversation so far. Its report is built from
the whole sentences of what it read that best answer the question, each quoted verbatim
with a [n] marker; headings and title lines inform the choice but are never quoted.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from typing import Any

from shared.contracts import Usage
from shared.ports import ModelTurn, ToolCall
from shared.text import detect_language, split_sentences, tokenize

READ_TOP = 3
REPORT_SENTENCES = 5
MIN_SENTENCE_CHARS = 12
HEADING_WEIGHT = 0.75
# A sentence scoring under this share of the best one is more likely padding than an answer.
RELATIVE_CUTOFF = 0.3
# The deep-research planning tool (agents/deep.py offers it by this name).
PLAN_TOOL = "plan_subquestions"
SENTENCE_ENDS = (".", "!", "?", "。", "！", "？")


class OfflineModel:
    name = "offline-extractive"
    offline = True

    def __init__(self, latency_ms: float = 0.0) -> None:
        self.latency_ms = latency_ms

    def ping(self) -> None:
        return None

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> ModelTurn:
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000)
        available = {t["function"]["name"] for t in tools}
        question = _question(messages)
        results = _tool_results(messages)
        turn_no = sum(1 for m in messages if m.get("role") == "assistant")
        calls = self._next_calls(question, results, available, _sources(messages))
        usage = Usage(
            prompt_tokens=sum(len(str(m.get("content") or "")) for m in messages) // 4,
            completion_tokens=sum(len(c["arguments"]) for c in calls) // 4,
        )
        tool_calls = [
            ToolCall(id=f"call_{turn_no}_{i}", name=c["name"], arguments=c["arguments"]) for i, c in enumerate(calls)
        ]
        content = None if tool_calls else "I could not find anything to report."
        return ModelTurn(content=content, tool_calls=tool_calls, usage=usage, model=self.name)

    def _next_calls(
        self,
        question: str,
        results: list[tuple[str, dict[str, Any]]],
        available: set[str],
        sources: list[dict[str, Any]],
    ) -> list[dict[str, str]]:
        if PLAN_TOOL in available:
            return [_call(PLAN_TOOL, {"subquestions": _subquestions(question, sources)})]
        searched = [r for name, r in results if name == "search_knowledge" and "results" in r]
        read = [c for name, r in results if name == "read_document" for c in r.get("chunks", [])]
        if not searched and "search_knowledge" in available:
            return [_call("search_knowledge", {"query": question, "top": 5})]
        if searched and not read and "read_document" in available:
            seen: list[tuple[str, int]] = []
            for hit in searched[-1]["results"]:
                key = (hit["doc_id"], hit["chunk_id"])
                if key not in seen:
                    seen.append(key)
            if seen:
                return [_call("read_document", {"doc_id": d, "chunk_id": c}) for d, c in seen[:READ_TOP]]
        if "write_report" not in available:
            return []
        return [_call("write_report", _report(question, read))]


def _sources(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sources a planning prompt shows after the question (a JSON paragraph), if any."""
    first_user = next((m for m in messages if m.get("role") == "user"), {"content": ""})
    parts = str(first_user.get("content") or "").split("\n\n", 1)
    try:
        data = json.loads(parts[1]) if len(parts) == 2 else {}
    except json.JSONDecodeError:
        return []
    sources = data.get("sources") if isinstance(data, dict) else None
    return [s for s in sources if isinstance(s, dict)] if isinstance(sources, list) else []


def _subquestions(question: str, sources: list[dict[str, Any]]) -> list[str]:
    """One sub-question per document the index offers for the question: the question, aimed at that document."""
    titles: list[str] = []
    for source in sources:
        title = str(source.get("title") or "").strip()
        if title and title not in titles:
            titles.append(title)
    return [f"{question} ({title})" for title in titles] or [question]


def _call(name: str, args: dict[str, Any]) -> dict[str, str]:
    return {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}


def _question(messages: list[dict[str, Any]]) -> str:
    first_user = next((m for m in messages if m.get("role") == "user"), {"content": ""})
    # The task is the first paragraph; later paragraphs are recalled session memory.
    return str(first_user.get("content") or "").split("\n\n", 1)[0].strip()


def _tool_results(messages: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    names: dict[str, str] = {}
    out: list[tuple[str, dict[str, Any]]] = []
    for m in messages:
        for call in m.get("tool_calls") or []:
            names[call["id"]] = call["function"]["name"]
        if m.get("role") == "tool":
            try:
                body = json.loads(m.get("content") or "{}")
            except json.JSONDecodeError:
                continue
            if isinstance(body, dict):
                out.append((names.get(m.get("tool_call_id", ""), ""), body))
    return out


def _stem(term: str) -> str:
    """A crude English stem, so "cancelling", "cancel" and "cancellation" meet; CJK bigrams pass as they are."""
    if not term.isascii() or len(term) <= 4:
        return term
    for suffix in ("ations", "ation", "ings", "ing", "ions", "ion", "ed", "es", "ly", "s"):
        if term.endswith(suffix) and len(term) - len(suffix) >= 4:
            term = term[: -len(suffix)]
            break
    return term[:-1] if term.endswith("ll") else term


def _terms(text: str) -> set[str]:
    return {_stem(t) for t in tokenize(text)}


def _is_whole_sentence(sentence: str) -> bool:
    """A sentence that ends as one and does not start mid-way (a chunk cut can leave a tail behind)."""
    first = sentence[0]
    return sentence.rstrip("\"')]\u300d\u300f\uff09").endswith(SENTENCE_ENDS) and not first.islower()


def _candidates(chunks: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str, set[str], set[str]]]:
    """Each citable sentence of the chunks read, with its terms and its section heading's terms, in reading order.

    Headings are context, never quotes: a heading names the topic of the sentences under it, so a
    question that matches a heading lifts that section's sentences.
    """
    out: list[tuple[dict[str, Any], str, set[str], set[str]]] = []
    for chunk in chunks:
        content = chunk["content"]
        heading: set[str] = set()
        for start, end in split_sentences(content):
            sentence = content[start:end].strip()
            if sentence.startswith("#"):
                heading = _terms(sentence.lstrip("#"))
                continue
            if len(sentence) < MIN_SENTENCE_CHARS or not _is_whole_sentence(sentence):
                continue
            if sentence.casefold() == str(chunk.get("title", "")).strip().casefold():
                continue  # a title line standing alone is a heading without its '#'
            out.append((chunk, sentence, _terms(sentence), heading))
    return out


def _report(question: str, chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Quote the whole sentences that best answer the question, in reading order, each cited.

    A sentence scores the weight of the question's terms it shares (rarer terms among the read
    sentences weigh more, so "backlog" outweighs "alert"), plus a share of that for terms its
    section heading shares (the sentences under "## Queue backlog" answer a question about the
    backlog even when they never repeat the word); sentences far below the best are left out
    rather than padded in.
    """
    language = detect_language(question)
    wanted = _terms(question)
    candidates = _candidates(chunks)
    frequency: Counter[str] = Counter()
    for _, _, terms, _ in candidates:
        frequency.update(terms)
    total = max(1, len(candidates))

    def weight(terms: set[str]) -> float:
        return sum(math.log(1 + total / frequency[t]) for t in terms & wanted if frequency[t])

    scored: list[tuple[float, int, dict[str, Any], str]] = []
    for order, (chunk, sentence, terms, heading) in enumerate(candidates):
        score = weight(terms) + HEADING_WEIGHT * weight(heading)
        if score > 0:
            scored.append((score, order, chunk, sentence))
    best_score = max((s[0] for s in scored), default=0.0)
    kept = [s for s in scored if s[0] >= RELATIVE_CUTOFF * best_score]
    best = sorted(kept, key=lambda s: (-s[0], s[1]))[:REPORT_SENTENCES]
    best.sort(key=lambda s: s[1])
    title = "調査結果" if language == "ja" else "Findings"
    lines = [f"## {title}", ""]
    cites: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _, _, chunk, sentence in best:
        if sentence in seen:
            continue
        seen.add(sentence)
        n = len(cites) + 1
        lines.append(f"- {sentence} [{n}]")
        cites.append({"n": n, "doc_id": chunk["doc_id"], "chunk_id": chunk["chunk_id"], "quote": sentence})
    if not cites:
        lines.append("該当する記述は見つかりませんでした。" if language == "ja" else "No relevant passage was found.")
    return {"markdown": "\n".join(lines) + "\n", "citations": cites}
