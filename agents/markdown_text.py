"""Markdown text that shows exactly what it says: escaping, citation markers, and where links may go.

The pieces agents/report_markdown.py writes a delivered report from, and what the API uses to show
a document's title or quote inside Markdown. A citation marker is `[n]` (n of 1-3 digits) not followed
by `:` or `(`, which could make it a reference definition or a link.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from markdown_it import MarkdownIt

__all__ = [
    "UNVERIFIED_MARKS",
    "LinkRule",
    "code_span",
    "escape_text",
    "looks_like_url",
    "markdown_parser",
    "marker_end",
    "markers_in",
    "past_markers",
    "safe_autolink",
    "without_markers",
]

_SAFE_SCHEMES = ("http", "https")
# What an uncited sentence ends with once marked (agents/claims.py MARKS, without the emphasis).
UNVERIFIED_MARKS = ("(unverified)", "（未検証）")


def markdown_parser() -> MarkdownIt:
    """CommonMark with tables and strikethrough, raw HTML recognised, and every link and image a token."""
    md = MarkdownIt("commonmark", {"html": True, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    # Every link and image becomes a token, whatever its scheme, so the rules below decide (markdown-it's own
    # check would leave `[x](javascript:...)` as text that a laxer renderer might still link).
    md.validateLink = lambda url: True  # type: ignore[method-assign]
    return md


_md = markdown_parser()


@dataclass(frozen=True)
class LinkRule:
    """Where a delivered report may link: the cited sources' URLs, and any URL on an allowed host."""

    urls: frozenset[str] = frozenset()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def of(cls, source_urls: Iterable[str | None], hosts: Iterable[str] = ()) -> LinkRule:
        urls = {_md.normalizeLink(u.strip()) for u in source_urls if u and _scheme_ok(u.strip())}
        return cls(frozenset(urls), frozenset(h.strip().lower().rstrip(".") for h in hosts if h.strip()))

    def allows(self, href: str) -> bool:
        href = href.strip()
        if not _scheme_ok(href) or any(ch in href for ch in "<>\\\n\r\t "):
            return False
        if href in self.urls or _md.normalizeLink(href) in self.urls:
            return True
        try:
            host = (urlsplit(href).hostname or "").rstrip(".")
        except ValueError:
            return False
        return bool(host) and host in self.hosts


def _scheme_ok(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in _SAFE_SCHEMES and bool(parts.netloc)


# --- text escaping -----------------------------------------------------------------------------

_ALWAYS = set("\\`*<|~[]")
_LINE_START = set("#+-=>_")


def marker_end(text: str, i: int) -> int:
    """The end of a citation marker `[digits]` starting at i, or -1."""
    j = i + 1
    while j < len(text) and text[j].isdigit() and j - i <= 3:
        j += 1
    if j == i + 1 or j >= len(text) or text[j] != "]":
        return -1
    nxt = text[j + 1] if j + 1 < len(text) else ""
    # `[1]:` and `[1](` could make a definition or a link: such a marker is escaped like any bracket. (`[1][2]`
    # could only be a reference link with a definition, and a delivered report has none.)
    return -1 if nxt in (":", "(") else j + 1


def markers_in(text: str) -> list[int]:
    """The numbers of the citation markers `[n]` in plain text, in order."""
    found, i = [], text.find("[")
    while i >= 0:
        end = marker_end(text, i)
        if end > 0:
            found.append(int(text[i + 1 : end - 1]))
        i = text.find("[", i + 1)
    return found


def escape_text(text: str, *, line_start: bool = True) -> str:
    """Plain text as Markdown that renders as exactly that text (markers `[n]` kept readable)."""
    out: list[str] = []
    i = 0
    at_start = line_start
    # The current line's text when it began in this call at a line start ("1." there opens a list).
    line: str | None = "" if line_start else None
    while i < len(text):
        ch = text[i]
        if ch == "\n":
            out.append("\n")
            at_start, line, i = True, "", i + 1
            continue
        if at_start and ch in " \t":  # leading blanks could make an indented code block
            i += 1
            continue
        if ch == "[":
            end = marker_end(text, i)
            if end > 0:
                out.append(text[i:end])
                at_start, i = False, end
                continue
        nxt = text[i + 1] if i + 1 < len(text) else ""
        prev = text[i - 1] if i > 0 else ""
        if ch in _ALWAYS or (at_start and ch in _LINE_START):
            out.append("\\" + ch)
        elif ch == "_" and not (prev.isalnum() and nxt.isalnum()):
            out.append("\\_")  # intraword underscores (snake_case) cannot open emphasis
        elif ch == "&" and (nxt.isalnum() or nxt == "#"):
            out.append("\\&")  # an entity reference
        elif ch == "!" and nxt == "[":
            out.append("\\!")
        elif ch in ".)" and line is not None and 0 < len(line) <= 9 and line.isdigit():
            out.append("\\" + ch)  # "1." at a line start would open an ordered list
        else:
            out.append(ch)
        if line is not None:
            line += ch
        at_start = False
        i += 1
    return "".join(out)


def code_span(content: str) -> str:
    content = content.replace("\n", " ")
    longest = run = 0
    for ch in content:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if content.startswith("`") or content.endswith("`") or content.startswith(" ") else ""
    return f"{fence}{pad}{content}{pad}{fence}"


def looks_like_url(word: str) -> bool:
    lowered = word.lower()
    return "://" in lowered or lowered.startswith("www.")


def safe_autolink(url: str | None, rule: LinkRule | None = None) -> str:
    """`<url>` if url is an http(s) URL the rule allows (any http(s) URL without a rule), else ""."""
    if not url:
        return ""
    url = url.strip()
    ok = rule.allows(url) if rule is not None else _scheme_ok(url)
    href = _md.normalizeLink(url)
    if not ok or any(ch in href for ch in "<>\\\n\r\t "):
        return ""
    return f"<{href}>"


def without_markers(text: str) -> str:
    """Plain text with its `[n]` markers removed and whitespace runs folded."""
    out, i = [], 0
    while i < len(text):
        end = marker_end(text, i) if text[i] == "[" else -1
        if end > 0:
            i = end
            continue
        out.append(text[i])
        i += 1
    return " ".join("".join(out).split())


def past_markers(text: str, i: int) -> int:
    """i moved past the markers (and blanks between them) that start at i, if any."""
    j = i
    while True:
        k = j
        while k < len(text) and text[k] in " \t":
            k += 1
        end = marker_end(text, k) if k < len(text) and text[k] == "[" else -1
        for mark in UNVERIFIED_MARKS:  # an earlier delivery's mark belongs to the sentence before it too
            if text.startswith(mark, k):
                end = k + len(mark)
        if end < 0:
            break
        j = end
    while j > i and j < len(text) and text[j] in ".,;:":
        j += 1  # "Claim [1]." with the stop after the marker stays whole
    return j
