"""What a delivered report may claim: a sentence stands as cited only if a verified citation backs it.

Citation verification (agents/citations.py) already holds that every citation quotes text of a
chunk the job read. This module decides about the sentences around the markers: a sentence with
no marker of a verified citation (none written, or its marker removed because the citation did
not verify) is uncited, and the job's policy says what happens to it: `keep` it as written,
`mark` it visibly, or `drop` it. A marker alone is not enough either: a sentence that shares
almost none of its words with the quotes it cites ("The admin password is hunter2 [1]" citing a
sentence about backups) is not backed by them and counts as uncited too.
"""

from __future__ import annotations

from collections.abc import Iterable

from agents.markdown_text import LinkRule
from agents.report_markdown import Action, Delivered, Judge, rebuild
from shared.contracts import Citation, UncitedPolicy
from shared.text import tokenize

__all__ = ["MARKS", "SUPPORT_MIN", "deliver", "judge_for", "supported"]

# Share of a sentence's words that must occur in the quotes it cites. Low on purpose: a faithful
# paraphrase shares the key terms and passes; a sentence about something else shares none.
SUPPORT_MIN = 1 / 3
MARKS = {"en": "*(unverified)*", "ja": "*（未検証）*"}
_STEM = 5  # words compared by their first letters: "committed" meets "commits"


def _terms(text: str) -> set[str]:
    return {t[:_STEM] if t.isascii() else t for t in tokenize(text)}


def supported(sentence: str, quotes: Iterable[str]) -> bool:
    """Whether the quotes carry enough of the sentence's words to back it."""
    wanted = _terms(sentence)
    if not wanted:
        return True  # nothing but markers, numbers or punctuation: no claim to back
    found = set().union(*(_terms(q) for q in quotes))
    return len(wanted & found) >= SUPPORT_MIN * len(wanted)


def judge_for(citations: list[Citation], uncited: UncitedPolicy) -> Judge:
    """The judge rebuild asks about each sentence: keep a backed one, apply `uncited` to the rest."""
    quotes = {c.n: c.quote for c in citations}

    def judge(sentence: str, markers: list[int]) -> Action:
        cited = [quotes[n] for n in markers if n in quotes]
        if cited and supported(sentence, cited):
            return "keep"
        return uncited

    return judge


def deliver(
    markdown: str,
    citations: list[Citation],
    *,
    uncited: UncitedPolicy,
    language: str,
    link_hosts: Iterable[str] = (),
    judge_claims: bool = True,
) -> Delivered:
    """The report as it leaves the agent: safe Markdown, links only to cited sources or allowed hosts,
    uncited sentences handled by policy (not judged when judge_claims is False: a text that claims
    nothing, such as the list of sources a stopped job had read)."""
    rule = LinkRule.of((c.url for c in citations), link_hosts)
    judge = judge_for(citations, uncited) if judge_claims else None
    return rebuild(markdown, rule, judge=judge, mark=MARKS.get(language, MARKS["en"]))
