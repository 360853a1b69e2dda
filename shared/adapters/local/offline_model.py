"""The offline extractive model: deterministic, no network, speaking the ChatModel port.

It drives the same agent loop a real model does (search, read, write_report with
citations), choosing each turn from the conversation so far. Its report is built from
the most relevant sentences of what it read, each quoted verbatim with a [n] marker.
"""

from __future__ import annotations

import json
import time
from typing import Any

from shared.contracts import Usage
from shared.ports import ModelTurn, ToolCall
from shared.text import detect_language, split_sentences, tokenize

READ_TOP = 3
REPORT_SENTENCES = 5
MIN_SENTENCE_CHARS = 12


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
        calls = self._next_calls(question, results, available)
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
        self, question: str, results: list[tuple[str, dict[str, Any]]], available: set[str]
    ) -> list[dict[str, str]]:
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


def _report(question: str, chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Pick the sentences sharing most terms with the question, in reading order, and cite each."""
    language = detect_language(question)
    wanted = set(tokenize(question))
    scored: list[tuple[float, int, dict[str, Any], str]] = []
    order = 0
    for chunk in chunks:
        content = chunk["content"]
        for start, end in split_sentences(content):
            sentence = content[start:end].strip()
            if len(sentence) < MIN_SENTENCE_CHARS or sentence.startswith("#"):
                continue
            terms = set(tokenize(sentence))
            overlap = len(wanted & terms)
            if overlap:
                scored.append((overlap / (len(terms) ** 0.5 + 1), order, chunk, sentence))
            order += 1
    best = sorted(scored, key=lambda s: (-s[0], s[1]))[:REPORT_SENTENCES]
    best.sort(key=lambda s: s[1])
    heading = "調査結果" if language == "ja" else "Findings"
    lines = [f"## {heading}", ""]
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
