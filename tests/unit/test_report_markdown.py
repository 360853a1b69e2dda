"""Delivered Markdown (agents/report_markdown.py, agents/claims.py): hostile constructs go, the rest survives.

Each hostile case is rebuilt and then checked by an oracle that does not share the code under test
(tests/fixtures/report_safety.py renders it with raw HTML on and reads the HTML back).
"""

from __future__ import annotations

import random

import pytest
from markdown_it import MarkdownIt

from agents.claims import MARKS, deliver, judge_for, supported
from agents.markdown_text import LinkRule, escape_text
from agents.report_markdown import audit, rebuild
from shared.contracts import Citation
from tests.fixtures.report_safety import markdown_problems

CITED = "https://docs.example/cited"
RULE = LinkRule.of([CITED], ["allowed.example"])
ALLOWED = {CITED, "https://allowed.example/page"}

HOSTILE = {
    "img onerror": "Backups run nightly <img src=x onerror=alert(1)> [1].",
    "script block": "<script>alert(1)</script>",
    "script inline": "text <script>alert(1)</script> more",
    "svg onload": "<svg onload=alert(1)>",
    "style block": "<style>body{display:none}</style>",
    "iframe": '<iframe src="http://evil.example"></iframe>',
    "html anchor": '<a href="javascript:alert(1)">x</a>',
    "html comment then tag": "<!-- x --><img src=x onerror=alert(1)>",
    "javascript link": "[click](javascript:alert(1))",
    "javascript link, mixed case": "[click](JaVaScRiPt:alert(1))",
    "javascript link, entity colon": "[click](javascript&#58;alert(1))",
    "javascript autolink": "<javascript:alert(1)>",
    "vbscript link": "[v](vbscript:msgbox(1))",
    "data link": "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "data image": "![x](data:image/png;base64,AAAA)",
    "outside image": "![t](http://evil.example/t.png)",
    "outside image by reference": "![t][img]\n\n[img]: http://evil.example/t.png",
    "cited URL as image": f"![t]({CITED})",
    "outside link": "[docs](http://evil.example/phish)",
    "outside link with title": '[docs](http://evil.example "title")',
    "outside autolink": "<http://evil.example/track>",
    "bare outside URL": "see http://evil.example/track now",
    "bare www host": "see www.evil.example now",
    "definition hijacks a marker": "Claim [1].\n\n[1]: http://evil.example",
    "marker written as a link": "Claim [1](http://evil.example).",
    "escaped definition": "\\[1\\]: http://evil.example",
    "entity-encoded tag": "&lt;img src=x onerror=alert(1)&gt;",
    "escaped tag": "\\<img src=x onerror=alert(1)\\>",
    "in a table": "| a |\n|---|\n| [x](javascript:alert(1)) <img src=x onerror=alert(1)> |",
    "in a list and quote": "- > <img src=x onerror=alert(1)> [x](javascript:alert(1))",
    "in emphasis": "**<img src=x onerror=alert(1)> [x](javascript:alert(1))**",
    "in a heading": "## <img src=x onerror=alert(1)> [x](javascript:alert(1))",
    "html in a code fence": "```html\n<script>alert(1)</script>\n```",
    "autolink as a marker label": "[1]: <javascript:alert(1)>\n\nClaim [1].",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_markdown_is_rebuilt_safe(case: str) -> None:
    delivered = rebuild(HOSTILE[case], RULE)

    assert markdown_problems(delivered.markdown, ALLOWED) == []
    assert audit(delivered.markdown, RULE) == []
    assert "fallback" not in delivered.removed
    assert rebuild(delivered.markdown, RULE).markdown == delivered.markdown  # a second pass changes nothing


def test_what_was_removed_is_counted_and_the_words_stay() -> None:
    delivered = rebuild(
        "Backups run nightly <img src=x onerror=alert(1)> and [restore](javascript:alert(1)) weekly "
        "![chart](http://evil.example/t.png) see http://evil.example/x [1].\n\n[1]: http://evil.example\n",
        RULE,
    )

    assert delivered.markdown == ("Backups run nightly  and restore weekly chart see `http://evil.example/x` [1].\n")
    assert delivered.removed == {"reference_definition": 1, "raw_html": 1, "link": 2, "image": 1, "bare_url": 1}


def test_cited_and_allowed_links_and_markers_and_formatting_survive() -> None:
    source = (
        "# Backups\n\n"
        f"Backups run nightly [1]. See [the guide]({CITED}) and <https://allowed.example/page>.\n\n"
        "- **Daily** *copies* `azcopy` [2][3]\n"
        "- Kept ~~five~~ seven days\n\n"
        "1. First\n2. Second\n\n"
        "> Quoted [1]\n\n"
        "| Step | Detail |\n|:--|--:|\n| 1 | copy [2] |\n\n"
        "```sh\necho <done>\n```\n"
    )
    delivered = rebuild(source, RULE)

    assert delivered.removed == {}
    assert delivered.markdown == (
        "# Backups\n\n"
        f"Backups run nightly [1]. See [the guide](<{CITED}>) and <https://allowed.example/page>.\n\n"
        "- **Daily** *copies* `azcopy` [2][3]\n"
        "- Kept ~~five~~ seven days\n\n"
        "1. First\n2. Second\n\n"
        "> Quoted [1]\n\n"
        "| Step | Detail |\n| :--- | ---: |\n| 1 | copy [2] |\n\n"
        "```sh\necho <done>\n```\n"
    )
    html = MarkdownIt("commonmark").enable("table").render(delivered.markdown)
    assert f'<a href="{CITED}">the guide</a>' in html and "<table>" in html and "<ol>" in html


def test_a_link_only_the_scheme_or_host_of_which_is_like_a_cited_one_is_not_allowed() -> None:
    rule = LinkRule.of([CITED, "javascript:alert(1)", "http:///nohost"], [])
    assert rule.allows(CITED)
    assert not rule.allows("javascript:alert(1)")  # a source's URL counts only when it is http(s)
    assert not rule.allows("https://docs.example/other")
    assert not rule.allows("https://docs.example.evil.example/cited")
    assert not rule.allows(f"{CITED} onmouseover=alert(1)")


def test_escaped_text_renders_as_exactly_that_text() -> None:
    """Random ASCII punctuation soup: whatever the text, Markdown shows it literally (1,000 strings)."""
    rng = random.Random(13)
    alphabet = "ab1 .#*_-+=>|<[]()!&;:`~\\\"'/"
    md = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    for _ in range(1000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24)))
        tokens = md.parseInline(escape_text(text))[0].children or []
        shown = "".join(t.content for t in tokens if t.type == "text")
        assert [t.type for t in tokens if t.type != "text"] == [], (text, escape_text(text))
        assert " ".join(shown.split()) == " ".join(text.split()), (text, escape_text(text))


# --- uncited sentences -------------------------------------------------------------------------

QUOTE = "Backups of the index run nightly at 18:00 UTC."


def citation(n: int, quote: str = QUOTE) -> Citation:
    return Citation(n=n, doc_id="ops", chunk_id=0, title="Ops", quote=quote, start=0, end=len(quote))


REPORT = "Backups run nightly at 18:00 UTC [1]. The admin password is hunter2.\n"


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("keep", REPORT),
        ("mark", "Backups run nightly at 18:00 UTC [1]. The admin password is hunter2. *(unverified)*\n"),
        ("drop", "Backups run nightly at 18:00 UTC [1].\n"),
    ],
)
def test_uncited_sentences_are_kept_marked_or_dropped(policy: str, expected: str) -> None:
    delivered = deliver(REPORT, [citation(1)], uncited=policy, language="en")  # type: ignore[arg-type]

    assert delivered.markdown == expected
    again = deliver(delivered.markdown, [citation(1)], uncited=policy, language="en")  # type: ignore[arg-type]
    assert again.markdown == expected  # marking twice adds nothing


def test_a_marker_of_an_unrelated_quote_does_not_back_a_sentence() -> None:
    report = "The admin password is hunter2 [1].\n"
    assert deliver(report, [citation(1)], uncited="mark", language="en").markdown == (
        "The admin password is hunter2 [1]. *(unverified)*\n"
    )
    assert deliver(report, [citation(1)], uncited="drop", language="en").markdown == ""
    assert not supported("The admin password is hunter2", [QUOTE])
    assert supported("The index is backed up every night at 18:00 UTC", [QUOTE])  # a faithful paraphrase


def test_uncited_lines_in_lists_tables_code_and_japanese_are_judged() -> None:
    report = (
        "- Backups run nightly at 18:00 UTC [1]\n- Restores take a day\n\n"
        "| When | What |\n|---|---|\n| 18:00 | backups run nightly [1] |\n| 09:00 | coffee |\n\n"
        "```\nrm -rf /\n```\n"
    )
    marked = deliver(report, [citation(1)], uncited="mark", language="en")
    assert marked.markdown == (
        "- Backups run nightly at 18:00 UTC [1]\n- Restores take a day *(unverified)*\n\n"
        "| When | What |\n| --- | --- |\n| 18:00 | backups run nightly [1] |\n| 09:00 | coffee *(unverified)* |\n\n"
        "```\nrm -rf /\n```\n\n*(unverified)*\n"
    )
    dropped = deliver(report, [citation(1)], uncited="drop", language="en")
    assert dropped.markdown == (
        "- Backups run nightly at 18:00 UTC [1]\n\n"
        "| When | What |\n| --- | --- |\n| 18:00 | backups run nightly [1] |\n"
    )
    assert dropped.removed == {"uncited_dropped": 3}
    ja = deliver("バックアップは毎晩実行されます。", [], uncited="mark", language="ja")
    assert ja.markdown == f"バックアップは毎晩実行されます。 {MARKS['ja']}\n"


def test_judge_keeps_a_sentence_only_for_a_verified_marker() -> None:
    judge = judge_for([citation(1)], "drop")
    assert judge("Backups run nightly at 18:00 UTC", [1]) == "keep"
    assert judge("Backups run nightly at 18:00 UTC", [2]) == "drop"  # [2] did not verify
    assert judge("Backups run nightly at 18:00 UTC", []) == "drop"
