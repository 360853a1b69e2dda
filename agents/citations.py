"""Citation verification: a citation stands only if its quote is text the agent really read."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from shared.contracts import Chunk, Citation, chunk_key

_MARKER = re.compile(r"\[(\d{1,3})\]")
_WS = re.compile(r"\s+")


@dataclass
class Verification:
    markdown: str
    citations: list[Citation]
    failed: list[dict[str, Any]] = field(default_factory=list)


def _locate(quote: str, content: str) -> tuple[int, int] | None:
    """Find quote in content exactly, else modulo whitespace runs (models reflow lines)."""
    quote = quote.strip()
    if not quote:
        return None
    start = content.find(quote)
    if start >= 0:
        return start, start + len(quote)
    pattern = r"\s+".join(re.escape(part) for part in _WS.split(quote) if part)
    match = re.search(pattern, content)
    return (match.start(), match.end()) if match else None


def verify(markdown: str, proposed: list[dict[str, Any]], sources: dict[str, Chunk]) -> Verification:
    """Keep the citations whose quote occurs in a chunk read in this job; report the rest.

    Every `[n]` in the text must map to one verified citation; entries never referenced in
    the text are dropped, and they are renumbered 1..k in order of first use.
    """
    by_n: dict[int, dict[str, Any]] = {}
    failed: list[dict[str, Any]] = []
    verified: dict[int, Citation] = {}
    for raw in proposed:
        try:
            n = int(raw["n"])
        except (KeyError, TypeError, ValueError):
            failed.append({"citation": raw, "why": "missing or non-numeric n"})
            continue
        by_n[n] = raw
    for n, raw in by_n.items():
        try:
            key = chunk_key(str(raw.get("doc_id", "")), int(raw.get("chunk_id", -1)))
        except (TypeError, ValueError):
            failed.append({"n": n, "citation": raw, "why": "chunk_id is not a number"})
            continue
        source = sources.get(key)
        if source is None:
            failed.append({"n": n, "citation": raw, "why": f"chunk {key} was not read in this job"})
            continue
        span = _locate(str(raw.get("quote", "")), source.content)
        if span is None:
            failed.append({"n": n, "citation": raw, "why": f"quote does not occur in chunk {key}"})
            continue
        start, end = span
        verified[n] = Citation(
            n=n,
            doc_id=source.doc_id,
            chunk_id=source.chunk_id,
            title=source.title,
            url=source.url,
            quote=source.content[start:end],
            start=start,
            end=end,
            version=source.version,
            page=source.page,
            section=source.section,
        )
    for n in sorted(set(int(m) for m in _MARKER.findall(markdown)) - set(by_n)):
        failed.append({"n": n, "why": f"[{n}] appears in the text but has no citation entry"})
    return Verification(markdown=markdown, citations=[verified[n] for n in sorted(verified)], failed=failed)


def finalize(markdown: str, citations: list[Citation]) -> tuple[str, list[Citation]]:
    """Drop markers without a verified citation and renumber the rest 1..k by first use."""
    valid = {c.n: c for c in citations}
    order: list[int] = []
    for m in _MARKER.finditer(markdown):
        n = int(m.group(1))
        if n in valid and n not in order:
            order.append(n)
    renumber = {old: new for new, old in enumerate(order, start=1)}

    def repl(m: re.Match[str]) -> str:
        n = int(m.group(1))
        return f"[{renumber[n]}]" if n in renumber else ""

    text = _MARKER.sub(repl, markdown)
    text = re.sub(r"[ \t]+\n", "\n", text)
    kept = [valid[old].model_copy(update={"n": new}) for old, new in renumber.items()]
    return text, sorted(kept, key=lambda c: c.n)
