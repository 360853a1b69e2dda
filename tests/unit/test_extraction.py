"""Extraction from real files the tests make: the right text in, the junk out, refusals with reasons."""

from __future__ import annotations

import os

import pytest

from shared.services.extraction import NoTextFound, UnsupportedDocument, detect_kind, extract
from tests.fixtures.documents import PNG_1PX, docx, html_page, pdf, scanned_pdf, zip_archive

PAGES = [
    ["Disaster recovery plan", "Fail over to the Osaka region when Tokyo is down for more than an hour."],
    ["Restore procedure", "Restore the knowledge index from the newest backup and verify the checksums."],
    ["Contacts", "Page the on-call engineer through the incident channel."],
]


def test_pdf_text_layer_is_read_page_by_page() -> None:
    extracted = extract("dr-plan.pdf", pdf(PAGES, title="DR plan"))
    assert extracted.kind == "pdf" and extracted.title == "DR plan"
    assert "Fail over to the Osaka region" in extracted.content
    assert [s.page for s in extracted.sections] == [1, 2, 3]
    second = extracted.content.index("Restore the knowledge index")
    assert extracted.at(second).page == 2
    assert extracted.at(extracted.content.index("Page the on-call")).page == 3


def test_scanned_pdf_without_text_layer_is_refused_with_the_reason() -> None:
    with pytest.raises(NoTextFound, match="no text layer") as raised:
        extract("scan.pdf", scanned_pdf())
    assert raised.value.status == 422 and "OCR" in raised.value.fix


def test_html_keeps_the_article_and_drops_scripts_styles_navigation_and_footer() -> None:
    body = (
        "<article><h1>Restore runbook</h1><p>Restore the index from the newest backup before noon.</p>"
        "<h2>Verify</h2><p>Compare the chunk counts with the backup manifest after every restore.</p></article>"
    )
    extracted = extract("restore.html", html_page("Restore runbook", body))
    assert extracted.kind == "html" and extracted.title == "Restore runbook"
    assert "Restore the index from the newest backup before noon." in extracted.content
    assert "Compare the chunk counts" in extracted.content
    for junk in ("SCRIPT-JUNK", "NAV-JUNK", "FOOTER-JUNK", "font-family", "analytics"):
        assert junk not in extracted.content
    verify = extracted.content.index("Compare the chunk counts")
    assert extracted.at(verify).heading == "Verify"


def test_docx_keeps_headings_as_sections() -> None:
    data = docx(
        [
            ("Title", "Incident handbook"),
            ("Heading 1", "Triage"),
            ("Normal", "Read the alert and open an incident within five minutes."),
            ("Heading 2", "Escalation"),
            ("Normal", "Escalate to the platform team when the queue backlog grows."),
        ]
    )
    extracted = extract("handbook.docx", data)
    assert extracted.kind == "docx" and extracted.title == "Incident handbook"
    assert "# Triage" in extracted.content and "## Escalation" in extracted.content
    assert extracted.at(extracted.content.index("Escalate to")).heading == "Escalation"
    assert extracted.at(extracted.content.index("Read the alert")).heading == "Triage"


def test_markdown_and_text_are_decoded_with_detection_not_replacement() -> None:
    text = "# 復元手順\n\n" + "".join(
        f"{n}. バックアップからインデックスを復元します。件数とチェックサムを確認してください。\n" for n in range(1, 6)
    )
    extracted = extract("fukugen.md", text.encode("shift_jis"))
    assert extracted.title == "復元手順" and extracted.content == text
    assert "\ufffd" not in extracted.content
    latin = "Café résumé: restore the naïve index.".encode("cp1252")
    assert "Café résumé" in extract("notes.txt", latin).content


@pytest.mark.parametrize(
    ("name", "data", "why"),
    [
        ("diagram.md", PNG_1PX, "PNG image"),
        ("notes.txt", bytes(range(256)) * 8, "binary data of no known type"),
        ("archive.docx", zip_archive(), "ZIP archive but not a Word document"),
        ("blob.bin", os.urandom(64) + b"\x00" * 16, "binary"),
    ],
)
def test_binary_impostors_are_refused_with_415_naming_the_accepted_types(name: str, data: bytes, why: str) -> None:
    with pytest.raises(UnsupportedDocument, match=why) as raised:
        extract(name, data)
    assert raised.value.status == 415
    assert "PDF" in raised.value.fix and "Markdown" in raised.value.fix and ".docx" in raised.value.fix
    assert "PDF (.pdf), HTML (.html, .htm), Word (.docx)" in raised.value.detail


def test_the_bytes_decide_over_the_name() -> None:
    assert detect_kind("really-a-pdf.md", pdf(PAGES)) == "pdf"
    assert detect_kind("page.txt", html_page("t", "<p>x</p>")) == "html"
    assert detect_kind("report.pdf", b"# just markdown") == "text"
    assert extract("really-a-pdf.md", pdf(PAGES)).kind == "pdf"


def test_declared_pdf_that_is_not_a_pdf_is_refused() -> None:
    with pytest.raises(UnsupportedDocument, match="not a PDF"):
        extract("upload.pdf", b"plain words", declared="application/pdf")


def test_files_without_text_are_refused() -> None:
    with pytest.raises(NoTextFound):
        extract("empty.md", "\ufeff \r\n".encode())
    with pytest.raises(NoTextFound):
        extract("blank.html", html_page("Blank", "<script>only()</script>"))
