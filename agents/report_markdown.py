"""Delivered reports as safe Markdown: parsed with markdown-it, rebuilt from the token tree.

A report is written by a model that read documents anyone may have planted, so its Markdown is
never passed on as written. It is parsed (raw HTML, every link and image recognised, whatever
its scheme) and written out again by this module, which only knows how to emit:

- text, with every character that could start Markdown syntax backslash-escaped (citation
  markers `[n]` stay as they are; no reference definition is ever emitted, so they stay text);
- emphasis, strong, strikethrough, code spans and blocks, headings, lists, block quotes, tables;
- links whose target is an http(s) URL of a cited source or on a host of REPORT_LINK_HOSTS.

Everything else goes: raw HTML (blocks and inline), images (their alt text stays, as text),
links elsewhere (their text stays; a `[n]` marker a planted `[n]: http://...` definition turned
into a link is a marker again), reference definitions, and bare URLs to other hosts become code
spans so no renderer that links bare URLs turns them into links. No regular expression decides
what is safe: the parser does, and `audit` parses the result again to check it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from markdown_it.tree import SyntaxTreeNode

from agents.markdown_text import (
    UNVERIFIED_MARKS,
    LinkRule,
    code_span,
    escape_text,
    looks_like_url,
    markdown_parser,
    markers_in,
    past_markers,
    without_markers,
)
from shared.text import split_sentences

__all__ = ["Action", "Delivered", "Judge", "audit", "inline_text", "rebuild"]

Action = Literal["keep", "mark", "drop"]
# Judge(sentence text without markers, its citation markers) -> what to do with the sentence.
Judge = Callable[[str, list[int]], Action]
_md = markdown_parser()


@dataclass
class Delivered:
    """The rebuilt Markdown and what was taken out or marked on the way (counts by kind)."""

    markdown: str
    removed: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str, n: int = 1) -> None:
        self.removed[kind] = self.removed.get(kind, 0) + n


def inline_text(text: str, rule: LinkRule | None = None) -> str:
    """Text from a document (a title, a quote) as one line of Markdown that shows exactly it: escaped,
    and words that look like URLs the rule does not allow as code spans (no renderer links those)."""
    writer = _Writer(rule or LinkRule(), None, "", Delivered(markdown=""))
    writer.line_start = False
    return writer.text(" ".join(text.split()))


# --- the rebuild -------------------------------------------------------------------------------


class _Writer:
    def __init__(self, rule: LinkRule, judge: Judge | None, mark: str, delivered: Delivered) -> None:
        self.rule = rule
        self.judge = judge
        self.mark = mark
        self.out = delivered
        self.line_start = True

    # blocks: each returns its lines, or [] when nothing is left of it

    def blocks(self, nodes: Iterable[SyntaxTreeNode], *, tight: bool = False) -> list[str]:
        lines: list[str] = []
        for node in nodes:
            block = self.block(node)
            if not block:
                continue
            if lines and not tight:
                lines.append("")
            lines.extend(block)
        return lines

    def block(self, node: SyntaxTreeNode) -> list[str]:
        kind = node.type
        if kind == "paragraph":
            return self.claim(node.children[0]) if node.children else []
        if kind == "heading":
            # Headings are structure, not claims: sanitised, never judged.
            text = self.inline(node.children[0], in_heading=True) if node.children else ""
            return [f"{'#' * int(node.tag[1:])} {text}"] if text.strip() else []
        if kind in ("bullet_list", "ordered_list"):
            return self.list_block(node)
        if kind == "blockquote":
            inner = self.blocks(node.children)
            return [f"> {line}" if line else ">" for line in inner]
        if kind in ("fence", "code_block"):
            return self.code_block(node)
        if kind == "hr":
            return ["***"]
        if kind == "table":
            return self.table(node)
        if kind == "html_block":
            self.out.count("raw_html")
            return []
        # Anything this writer does not know is kept only as the blocks inside it.
        return self.blocks(node.children)

    def list_block(self, node: SyntaxTreeNode) -> list[str]:
        ordered = node.type == "ordered_list"
        tight = any(p.hidden for item in node.children for p in item.children if p.type == "paragraph")
        start = int(str(node.attrs.get("start", 1))) if ordered else 1
        delimiter = node.markup if node.markup in (".", ")") else "."
        bullet = node.markup if node.markup in ("-", "*", "+") else "-"
        lines: list[str] = []
        number = start
        for item in node.children:
            body = self.blocks(item.children, tight=False)
            if not body:
                continue
            prefix = f"{number}{delimiter} " if ordered else f"{bullet} "
            number += 1
            if lines and not tight:
                lines.append("")
            indent = " " * len(prefix)
            lines.append(prefix + body[0])
            lines.extend(indent + line if line else "" for line in body[1:])
        return lines

    def code_block(self, node: SyntaxTreeNode) -> list[str]:
        content = node.content
        longest = run = 0
        for ch in content:
            run = run + 1 if ch == "`" else 0
            longest = max(longest, run)
        fence = "`" * max(3, longest + 1)
        words = (node.info or "").split()
        language = words[0] if words and all(c.isalnum() or c in "-_+" for c in words[0]) else ""
        body = content[:-1] if content.endswith("\n") else content
        lines = [fence + language, *body.split("\n"), fence]
        if self.judge is None:
            return lines
        # Code carries no citation marker: what it says is unverified like any uncited sentence.
        action = self.judge(body, [])
        if action == "drop":
            self.out.count("uncited_dropped")
            return []
        if action == "mark":
            self.out.count("uncited_marked")
            return [*lines, "", self.mark]
        return lines

    def table(self, node: SyntaxTreeNode) -> list[str]:
        rows: list[list[str]] = []
        aligns: list[str] = []
        for section in node.children:
            for row in section.children:
                cells = [
                    self.inline(cell.children[0], in_heading=True) if cell.children else "" for cell in row.children
                ]
                if section.type == "thead":
                    aligns = [str(cell.attrs.get("style", "")) for cell in row.children]
                    rows.append(cells)
                    continue
                action = self.row_action(row)
                if action == "drop":
                    self.out.count("uncited_dropped")
                    continue
                if action == "mark" and cells:
                    self.out.count("uncited_marked")
                    cells[-1] = f"{cells[-1]} {self.mark}".strip()
                rows.append(cells)
        if not rows:
            return []
        width = max(len(r) for r in rows)
        delimiter = [_delimiter(aligns[i] if i < len(aligns) else "") for i in range(width)]
        lines = [_row(rows[0], width), _row(delimiter, width)]
        lines.extend(_row(r, width) for r in rows[1:])
        return lines

    def row_action(self, row: SyntaxTreeNode) -> Action:
        if self.judge is None:
            return "keep"
        text = " ".join(_plain(cell) for cell in row.children)
        if without_markers(text).endswith(UNVERIFIED_MARKS):
            return "keep"
        return self.judge(without_markers(text), markers_in(text))

    # inline content

    def claim(self, inline: SyntaxTreeNode) -> list[str]:
        """A paragraph's inline content, sentence by sentence through the judge."""
        self.line_start = True
        if self.judge is None:
            return _lines(self.inline_nodes(inline.children))
        parts: list[str] = []
        for sentence in _sentences([n for n in self.visible(inline.children) if not isinstance(n, str)]):
            plain = "".join(_plain_piece(p) for p in sentence)
            bare = without_markers(plain)
            action: Action = (
                "keep" if not bare or bare.endswith(UNVERIFIED_MARKS) else self.judge(bare, markers_in(plain))
            )
            if action == "drop":
                self.out.count("uncited_dropped")
                continue
            text = "".join(self.piece(p) for p in sentence)
            if action == "mark":
                self.out.count("uncited_marked")
                body = text.rstrip()
                text = f"{body} {self.mark}{text[len(body) :]}"
            parts.append(text)
        return _lines("".join(parts))

    def inline(self, inline: SyntaxTreeNode, *, in_heading: bool = False) -> str:
        self.line_start = True
        text = self.inline_nodes(inline.children)
        return " ".join(text.split("\n")).strip() if in_heading else text.strip()

    def inline_nodes(self, nodes: Iterable[SyntaxTreeNode | str]) -> str:
        return "".join(self.piece(n) for n in self.visible(nodes))

    def visible(self, nodes: Iterable[SyntaxTreeNode | str]) -> list[SyntaxTreeNode | str]:
        """nodes without raw inline HTML, and without the text of an inline <script> or <style> (code, not words)."""
        out: list[SyntaxTreeNode | str] = []
        hidden = ""
        for node in nodes:
            if not isinstance(node, str) and node.type == "html_inline":
                tag = node.content.lower()
                for name in _HIDDEN_ELEMENTS:
                    if not hidden and tag.startswith(f"<{name}") and not tag.rstrip().endswith("/>"):
                        hidden = name
                    elif hidden == name and tag.startswith(f"</{name}"):
                        hidden = ""
                self.out.count("raw_html")
            elif not hidden:
                out.append(node)
        return out

    def piece(self, node: SyntaxTreeNode | str) -> str:
        if isinstance(node, str):
            return self.text(node)
        kind = node.type
        if kind == "text":
            return self.text(node.content)
        if kind == "softbreak":
            self.line_start = True
            return "\n"
        if kind == "hardbreak":
            self.line_start = True
            return "\\\n"
        if kind == "code_inline":
            self.line_start = False
            return code_span(node.content)
        if kind in ("em", "strong", "s"):
            mark = {"em": "*", "strong": "**", "s": "~~"}[kind]
            inner = self.inline_nodes(node.children)
            if not inner.strip():
                return inner
            self.line_start = False
            return f"{mark}{inner}{mark}"
        if kind == "link":
            return self.link(node)
        if kind == "image":
            self.out.count("image")
            return self.text(_plain(node))  # the alt text, never the picture
        if kind == "html_inline":
            self.out.count("raw_html")
            return ""
        return self.inline_nodes(node.children)

    def link(self, node: SyntaxTreeNode) -> str:
        href = str(node.attrs.get("href", ""))
        if self.rule.allows(href):
            target = _md.normalizeLink(href)
            self.line_start = False
            if node.markup == "autolink":
                return f"<{target}>"
            label = self.inline_nodes(node.children).replace("\n", " ").strip() or escape_text(href)
            return f"[{label}](<{target}>)"
        self.out.count("link")
        label = _plain(node)
        if markers_in(label) and label.startswith("[") and label.endswith("]"):
            # `[1]` with a planted `[1]: http://...` definition: the marker, never the outside link.
            return self.text(label)
        if node.markup == "autolink":
            self.line_start = False
            return code_span(label)
        return self.inline_nodes(node.children)

    def text(self, text: str) -> str:
        """Escaped text; words that look like URLs to hosts not allowed become code spans."""
        out: list[str] = []
        word_start = 0
        for i in range(len(text) + 1):
            if i < len(text) and not text[i].isspace():
                continue
            word = text[word_start:i]
            if word:
                if looks_like_url(word) and not self.rule.allows(word.rstrip(".,;:!?)")):
                    self.out.count("bare_url")
                    out.append(code_span(word))
                    self.line_start = False
                else:
                    out.append(escape_text(word, line_start=self.line_start))
                    self.line_start = self.line_start and not word
            if i < len(text):
                if text[i] == "\n":
                    self.line_start = True
                out.append("" if self.line_start and text[i] in " \t" else text[i])
            word_start = i + 1
        return "".join(out)


def _lines(text: str) -> list[str]:
    """A paragraph's lines; a line left blank (its raw HTML removed) would split the paragraph."""
    return [line for line in text.strip().split("\n") if line.strip()]


def _delimiter(style: str) -> str:
    if "left" in style:
        return ":---"
    if "right" in style:
        return "---:"
    if "center" in style:
        return ":---:"
    return "---"


def _row(cells: list[str], width: int) -> str:
    cells = cells + [""] * (width - len(cells))
    return "| " + " | ".join(c.replace("\n", " ") for c in cells) + " |"


def _plain(node: SyntaxTreeNode) -> str:
    """The text a reader sees of an inline node (markup left out)."""
    if node.type in ("text", "code_inline"):
        return node.content
    if node.type in ("softbreak", "hardbreak"):
        return "\n"
    if node.type == "html_inline":
        return ""
    text = "".join(_plain(c) for c in node.children)
    if node.type == "link" and text.isdigit() and len(text) <= 3:
        return f"[{text}]"  # a marker made a link (by a definition, or written so): still the marker
    return text


def _plain_piece(piece: SyntaxTreeNode | str) -> str:
    return piece if isinstance(piece, str) else _plain(piece)


_HIDDEN_ELEMENTS = ("script", "style")


def _sentences(children: list[SyntaxTreeNode]) -> list[list[SyntaxTreeNode | str]]:
    """The inline children cut into sentences, at top-level text only (never inside a link or emphasis).

    Markers right after a sentence's end (`Claim. [1]`) belong to the sentence before them.
    """
    plain = "".join(_plain(c) for c in children)
    # Where each top-level text child sits in plain: cuts may only fall there (or between children).
    spans: list[tuple[int, int, int]] = []  # (start, end, child index) of top-level text
    bounds: set[int] = {0}
    offset = 0
    for index, child in enumerate(children):
        length = len(_plain(child))
        if child.type == "text":
            spans.append((offset, offset + length, index))
        offset += length
        bounds.add(offset)
    cuts: list[int] = []
    for start, _ in split_sentences(plain)[1:]:
        cut = past_markers(plain, start)
        if cut in bounds or any(s <= cut <= e for s, e, _ in spans):
            if not cuts or cut > cuts[-1]:
                cuts.append(cut)
    cuts = [c for c in cuts if 0 < c < len(plain)]
    sentences: list[list[SyntaxTreeNode | str]] = [[]]
    offset = 0
    for child in children:
        length = len(_plain(child))
        end = offset + length
        if child.type != "text":
            while cuts and cuts[0] <= offset:
                cuts.pop(0)
                if sentences[-1]:
                    sentences.append([])
            sentences[-1].append(child)
            offset = end
            continue
        text, pos = child.content, offset
        while cuts and cuts[0] <= end:
            cut = cuts.pop(0)
            head = text[: cut - pos]
            if head:
                sentences[-1].append(head)
            if sentences[-1]:
                sentences.append([])
            text, pos = text[cut - pos :], cut
        if text:
            sentences[-1].append(text)
        offset = end
    return [s for s in sentences if s]


def rebuild(markdown: str, rule: LinkRule, *, judge: Judge | None = None, mark: str = "") -> Delivered:
    """markdown rebuilt as safe Markdown; with a judge, each sentence kept, marked or dropped."""
    delivered = Delivered(markdown="")
    env: dict[str, object] = {}
    tree = SyntaxTreeNode(_md.parse(markdown, env))
    references = env.get("references")
    if isinstance(references, dict) and references:
        delivered.count("reference_definition", len(references))
    lines = _Writer(rule, judge, mark, delivered).blocks(tree.children)
    text = "\n".join(lines).strip("\n")
    delivered.markdown = text + "\n" if text else ""
    problems = audit(delivered.markdown, rule)
    if problems:
        # Not expected: the writer emits nothing audit refuses. Should it ever, the text goes out as code.
        delivered.count("fallback")
        delivered.markdown = _as_code(markdown)
    return delivered


def _as_code(markdown: str) -> str:
    longest = run = 0
    for ch in markdown:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{markdown.rstrip()}\n{fence}\n"


def audit(markdown: str, rule: LinkRule) -> list[str]:
    """What in markdown a renderer would turn into HTML, an image, or a link the rule refuses."""
    problems: list[str] = []
    env: dict[str, object] = {}
    tokens = _md.parse(markdown, env)
    if env.get("references"):
        problems.append("reference definition")
    stack = list(tokens)
    while stack:
        token = stack.pop()
        stack.extend(token.children or [])
        if token.type in ("html_block", "html_inline"):
            problems.append(f"raw HTML {token.content.strip()[:40]!r}")
        elif token.type == "image":
            problems.append(f"image {str(token.attrs.get('src', ''))[:60]!r}")
        elif token.type == "link_open" and not rule.allows(str(token.attrs.get("href", ""))):
            problems.append(f"link {str(token.attrs.get('href', ''))[:60]!r}")
        elif token.type == "text" and any(
            looks_like_url(w) and not rule.allows(w.rstrip(".,;:!?)")) for w in token.content.split()
        ):
            problems.append(f"bare URL in {token.content[:60]!r}")
    return problems
