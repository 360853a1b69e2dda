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
from urllib.parse import urlsplit

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

from shared.text import split_sentences

__all__ = [
    "Action",
    "Delivered",
    "Judge",
    "LinkRule",
    "audit",
    "escape_text",
    "inline_text",
    "markers_in",
    "rebuild",
    "safe_autolink",
]

Action = Literal["keep", "mark", "drop"]
# Judge(sentence text without markers, its citation markers) -> what to do with the sentence.
Judge = Callable[[str, list[int]], Action]
_SAFE_SCHEMES = ("http", "https")


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": True, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    # Every link and image becomes a token, whatever its scheme, so the rules below decide (markdown-it's own
    # check would leave `[x](javascript:...)` as text that a laxer renderer might still link).
    md.validateLink = lambda url: True  # type: ignore[method-assign]
    return md


_md = _parser()


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


@dataclass
class Delivered:
    """The rebuilt Markdown and what was taken out or marked on the way (counts by kind)."""

    markdown: str
    removed: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str, n: int = 1) -> None:
        self.removed[kind] = self.removed.get(kind, 0) + n


# --- text escaping -----------------------------------------------------------------------------

_ALWAYS = set("\\`*<|~[]")
_LINE_START = set("#+-=>_")


def _marker_end(text: str, i: int) -> int:
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
        end = _marker_end(text, i)
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
            end = _marker_end(text, i)
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


def _code_span(content: str) -> str:
    content = content.replace("\n", " ")
    longest = run = 0
    for ch in content:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if content.startswith("`") or content.endswith("`") or content.startswith(" ") else ""
    return f"{fence}{pad}{content}{pad}{fence}"


def _looks_like_url(word: str) -> bool:
    lowered = word.lower()
    return "://" in lowered or lowered.startswith("www.")


def inline_text(text: str, rule: LinkRule | None = None) -> str:
    """Text from a document (a title, a quote) as one line of Markdown that shows exactly it: escaped,
    and words that look like URLs the rule does not allow as code spans (no renderer links those)."""
    writer = _Writer(rule or LinkRule(), None, "", Delivered(markdown=""))
    writer.line_start = False
    return writer.text(" ".join(text.split()))


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
        if _without_markers(text).endswith(_MARKS):
            return "keep"
        return self.judge(_without_markers(text), markers_in(text))

    # inline content

    def claim(self, inline: SyntaxTreeNode) -> list[str]:
        """A paragraph's inline content, sentence by sentence through the judge."""
        self.line_start = True
        if self.judge is None:
            return _lines(self.inline_nodes(inline.children))
        parts: list[str] = []
        for sentence in _sentences([n for n in self.visible(inline.children) if not isinstance(n, str)]):
            plain = "".join(_plain_piece(p) for p in sentence)
            bare = _without_markers(plain)
            action: Action = "keep" if not bare or bare.endswith(_MARKS) else self.judge(bare, markers_in(plain))
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
            return _code_span(node.content)
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
            return _code_span(label)
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
                if _looks_like_url(word) and not self.rule.allows(word.rstrip(".,;:!?)")):
                    self.out.count("bare_url")
                    out.append(_code_span(word))
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


_MARKS = ("(unverified)", "（未検証）")
_HIDDEN_ELEMENTS = ("script", "style")


def _without_markers(text: str) -> str:
    """Plain text with its `[n]` markers removed and whitespace runs folded."""
    out, i = [], 0
    while i < len(text):
        end = _marker_end(text, i) if text[i] == "[" else -1
        if end > 0:
            i = end
            continue
        out.append(text[i])
        i += 1
    return " ".join("".join(out).split())


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
        cut = _past_markers(plain, start)
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


def _past_markers(text: str, i: int) -> int:
    """i moved past the markers (and blanks between them) that start at i, if any."""
    j = i
    while True:
        k = j
        while k < len(text) and text[k] in " \t":
            k += 1
        end = _marker_end(text, k) if k < len(text) and text[k] == "[" else -1
        for mark in _MARKS:  # an earlier delivery's mark belongs to the sentence before it too
            if text.startswith(mark, k):
                end = k + len(mark)
        if end < 0:
            break
        j = end
    while j > i and j < len(text) and text[j] in ".,;:":
        j += 1  # "Claim [1]." with the stop after the marker stays whole
    return j


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
            _looks_like_url(w) and not rule.allows(w.rstrip(".,;:!?)")) for w in token.content.split()
        ):
            problems.append(f"bare URL in {token.content[:60]!r}")
    return problems
