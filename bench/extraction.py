"""Why these extraction libraries: speed and quality of the candidates on the same files, in this run.

PDF: pypdf (chosen) against pdfminer.six on a 20-page PDF made from the repository's documents:
ms per page, word recall against the source text, and doubled spaces (layout padding).
HTML: trafilatura (chosen) against a selectolax tag filter and BeautifulSoup's get_text, on the
same documents served as pages with scripts, styles, navigation and a footer; once with
semantic markup (<main>, <nav>, <footer>) and once as plain <div>s, as many intranet pages are:
ms per page, word recall, and boilerplate words that leaked in.

    python bench/extraction.py
"""

from __future__ import annotations

import html as html_escape
import io
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.documents import pdf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
JUNK = "JUNKWORD"


def sources() -> list[str]:
    english = [p for p in sorted((ROOT / "docs").glob("*.md")) if not p.name.endswith(".ja.md")]
    return [p.read_text(encoding="utf-8") for p in english]


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]{3,}", text.lower()))


def timed(fn: Callable[[], object], repeat: int = 3) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best * 1000, result


def bench_pdf() -> None:
    import pypdf
    from pdfminer.high_level import extract_pages
    from pdfminer.layout import LTTextContainer

    lines = [ln.strip("#` ") for text in sources() for ln in text.splitlines() if ln.strip() and ln.isascii()]
    pages = [lines[i * 30 : (i + 1) * 30] for i in range(20)]
    data = pdf(pages)
    source = words(" ".join(ln for page in pages for ln in page))

    def with_pypdf() -> list[str]:
        return [p.extract_text() or "" for p in pypdf.PdfReader(io.BytesIO(data)).pages]

    def with_pdfminer() -> list[str]:
        return [
            "".join(e.get_text() for e in page if isinstance(e, LTTextContainer))
            for page in extract_pages(io.BytesIO(data))
        ]

    print(f"PDF: {len(pages)} pages, {len(data) / 1000:.0f} kB")
    for name, fn in (("pypdf", with_pypdf), ("pdfminer.six", with_pdfminer)):
        ms, out = timed(fn)
        text = " ".join(out)  # type: ignore[arg-type]
        got = words(text)
        print(
            f"  {name:<13} {ms / len(pages):6.2f} ms/page  recall {len(source & got) / len(source):.3f}  "
            f"doubled spaces {text.count('  '):5d}"
        )


def page(markdown: str, semantic: bool) -> str:
    body = []
    for block in markdown.split("\n\n"):
        block = block.strip()
        if not block or block.startswith("```"):
            continue
        heading = re.match(r"(#{1,6})\s+(.*)", block)
        if heading:
            level = len(heading.group(1))
            body.append(f"<h{level}>{html_escape.escape(heading.group(2))}</h{level}>")
        else:
            body.append(f"<p>{html_escape.escape(block)}</p>")
    # Menus are lists of links and footers are paragraphs, as on most sites.
    nav = "<ul>" + "".join(f"<li><a href='/{w}'>{w} {JUNK}</a></li>" for w in ("Home", "Docs", "Help")) + "</ul>"
    tags = ("main", "nav", "footer") if semantic else ("div", "div", "div")
    return (
        f"<!doctype html><html><head><title>Runbook</title><style>p {{ color: red }}</style>"
        f"<script>var t = '{JUNK}';</script></head><body><{tags[1]} class='menu'>{nav}</{tags[1]}>"
        f"<{tags[0]} id='content'>{''.join(body)}</{tags[0]}>"
        f"<{tags[2]} class='footer'><p>Copyright 2026 Contoso {JUNK}. Privacy {JUNK}</p></{tags[2]}>"
        f"<script>track('{JUNK}')</script></body></html>"
    )


def bench_html() -> None:
    import trafilatura
    from bs4 import BeautifulSoup
    from selectolax.lexbor import LexborHTMLParser

    def with_trafilatura(h: str) -> str:
        return trafilatura.extract(h, output_format="markdown", favor_precision=True) or ""

    def with_selectolax(h: str) -> str:
        tree = LexborHTMLParser(h)
        for node in tree.css("script, style, nav, header, footer, aside, noscript, form"):
            node.decompose()
        root = tree.css_first("main") or tree.css_first("article") or tree.body
        return "\n\n".join(n.text(separator=" ").strip() for n in root.css("h1, h2, h3, h4, h5, h6, p, li, pre, td"))

    def with_bs4(h: str) -> str:
        soup = BeautifulSoup(h, "lxml")
        for node in soup(["script", "style", "nav", "header", "footer", "aside"]):
            node.decompose()
        return soup.get_text("\n")

    texts = sources()
    for semantic in (True, False):
        pages = [page(t, semantic) for t in texts]
        print(f"HTML: {len(pages)} pages, {'semantic markup' if semantic else 'plain <div>s'}")
        for name, fn in (("trafilatura", with_trafilatura), ("selectolax", with_selectolax), ("bs4", with_bs4)):
            ms, outs = timed(lambda fn=fn, pages=pages: [fn(h) for h in pages])  # type: ignore[misc]
            recall = [
                len(words(src) & words(out)) / len(words(src))
                for src, out in zip(texts, outs, strict=True)  # type: ignore[call-overload]
            ]
            junk = sum(out.count(JUNK) for out in outs)  # type: ignore[union-attr]
            print(
                f"  {name:<13} {ms / len(pages):6.2f} ms/page  recall {sum(recall) / len(recall):.3f}  "
                f"boilerplate words {junk}"
            )


def main() -> int:
    bench_pdf()
    bench_html()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
