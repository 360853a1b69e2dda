"""Reports as HTML that is safe to show: Markdown parsed with raw HTML off, then sanitised.

A report's text comes from a model that read documents anyone may have planted, so nothing in it
is trusted: markdown-it renders any raw HTML as text, nh3 (ammonia) then keeps only an allow-list
of tags and attributes and only http(s) and in-page links, and citation markers `[n]` become
links to the quoted passage, built here from the verified citation list, never from the text.
"""

from __future__ import annotations

import re
from html import escape

import nh3
from markdown_it import MarkdownIt

from shared.contracts import Citation

__all__ = ["report_html", "highlighted_passage"]

_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")

_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "strong", "em", "code", "pre",
    "blockquote", "a", "table", "thead", "tbody", "tr", "th", "td", "sup",
}  # fmt: skip
_ATTRIBUTES = {"a": {"href", "class", "id"}, "sup": {"id"}, "th": {"align"}, "td": {"align"}}
_MARKER = re.compile(r"\[(\d{1,3})\]")
_OPENS_SKIPPED = re.compile(r"<(a|code|pre)[\s>]")
_CLOSES_SKIPPED = re.compile(r"</(a|code|pre)>")


def _sanitise(html: str) -> str:
    return nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes={"http", "https"},
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


def report_html(markdown: str, citations: list[Citation], passage_url: str) -> str:
    """The report's Markdown as sanitised HTML; each known `[n]` links to `passage_url.format(n=n)`."""
    known = {c.n for c in citations}
    html = _sanitise(_markdown.render(markdown))

    def link(match: re.Match[str]) -> str:
        n = int(match.group(1))
        if n not in known:
            return match.group(0)
        href = escape(passage_url.format(n=n), quote=True)
        return f'<sup><a class="cite" href="{href}" aria-label="source {n}">[{n}]</a></sup>'

    # Markers are replaced in text only (between tags, outside links and code), so no attribute or
    # code sample is ever rewritten.
    parts = re.split(r"(<[^>]*>)", html)
    skipping = 0
    for i, part in enumerate(parts):
        if part.startswith("<"):
            if _OPENS_SKIPPED.match(part):
                skipping += 1
            elif _CLOSES_SKIPPED.match(part):
                skipping = max(0, skipping - 1)
            continue
        if not skipping:
            parts[i] = _MARKER.sub(link, part)
    return _sanitise("".join(parts))


def highlighted_passage(chunk_text: str, citation: Citation) -> tuple[str, str, str]:
    """(before, quoted, after) of the chunk: the quote at its verified offsets, or found by search."""
    start, end = citation.start, citation.end
    if not (0 <= start < end <= len(chunk_text)) or chunk_text[start:end] != citation.quote:
        found = chunk_text.find(citation.quote)
        if found < 0:
            return chunk_text, "", ""
        start, end = found, found + len(citation.quote)
    return chunk_text[:start], chunk_text[start:end], chunk_text[end:]
