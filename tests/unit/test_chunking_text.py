"""Tokens, sentences, language, chunks and uploads: the text layer under search and citations."""

from __future__ import annotations

import random

import pytest

from shared.contracts import DOC_ID_PATTERN, Document, valid_doc_id
from shared.services.knowledge import chunk_document, parse_upload
from shared.text import best_snippet, detect_language, split_sentences, tokenize

RUNBOOK_JA = """# 運用ランブック

## バックアップと復元

ナレッジインデックスは毎日バックアップされます。復元の手順では、選んだバックアップからインデックスを再構築します！
件数とチェックサムを検証しますか？はい。

```bash
# これは見出しではなくコメント
az storage blob download-batch --destination ./restore
```

## デッドレターキュー

- 件数を確認する
- 理由を読む
1. 一時的な障害なら再投入する
"""


def sentences(text: str) -> list[str]:
    return [text[start:end] for start, end in split_sentences(text)]


# --- tokenize -------------------------------------------------------------------------------------


def test_tokenize_lowercases_english_and_drops_stop_words() -> None:
    assert tokenize("How do I restore THE Backup?") == ["restore", "backup"]


def test_tokenize_folds_plurals_and_width() -> None:
    assert tokenize("Backups policies ＡＢＣ１２３") == ["backup", "policy", "abc123"]
    assert tokenize("status process analysis") == ["status", "process", "analysis"]


def test_tokenize_keeps_digits_and_splits_on_punctuation() -> None:
    assert tokenize("agent-sb-prd v2.3 18:00") == ["agent", "sb", "prd", "v2", "3", "18", "00"]


def test_tokenize_japanese_as_bigrams_without_particles() -> None:
    assert tokenize("バックアップの復元手順は？") == ["バッ", "ック", "クア", "アッ", "ップ", "復元", "元手", "手順"]


def test_tokenize_single_kanji_is_a_unigram_and_particle_chains_drop() -> None:
    assert tokenize("鍵") == ["鍵"]
    assert tokenize("からの") == []
    assert "から" not in tokenize("バックアップからの復元")


def test_tokenize_mixed_text_and_halfwidth_kana() -> None:
    assert tokenize("Azureのﾊﾞｯｸｱｯﾌﾟ") == ["azure", "バッ", "ック", "クア", "アッ", "ップ"]


def test_a_query_and_a_passage_share_tokens() -> None:
    query = set(tokenize("バックアップの復元手順は？"))
    passage = set(tokenize("復元の手順では、選んだバックアップからインデックスを再構築します。"))
    assert {"復元", "手順", "バッ", "ップ"} <= query & passage


def test_tokenize_empty_and_symbols() -> None:
    assert tokenize("") == []
    assert tokenize('"*-()') == []


# --- split_sentences ------------------------------------------------------------------------------


def test_english_sentences_split_on_terminal_punctuation() -> None:
    text = "Backups run daily. Are they verified? Yes! Counts match."
    assert sentences(text) == ["Backups run daily.", "Are they verified?", "Yes!", "Counts match."]


def test_abbreviations_and_decimals_do_not_end_sentences() -> None:
    text = "Use a tool, e.g. the CLI. Version 2.5 is current. Mr. Tanaka approved it."
    assert sentences(text) == ["Use a tool, e.g. the CLI.", "Version 2.5 is current.", "Mr. Tanaka approved it."]


def test_japanese_sentences_split_on_full_stops() -> None:
    text = "毎日バックアップします。復元は手順に従います！確認しましたか？「はい。」と答えます。"
    assert sentences(text) == [
        "毎日バックアップします。",
        "復元は手順に従います！",
        "確認しましたか？",
        "「はい。」",
        "と答えます。",
    ]


def test_markdown_headings_and_list_items_are_their_own_sentences() -> None:
    got = sentences(RUNBOOK_JA)
    assert got[:3] == ["# 運用ランブック", "## バックアップと復元", "ナレッジインデックスは毎日バックアップされます。"]
    assert "- 件数を確認する" in got and "- 理由を読む" in got and "1. 一時的な障害なら再投入する" in got


def test_soft_wrapped_english_lines_stay_one_sentence() -> None:
    text = "The export pages through the index\nby key, not by offset.\nNext sentence."
    assert sentences(text) == ["The export pages through the index\nby key, not by offset.", "Next sentence."]


def test_sentence_offsets_index_the_original_text() -> None:
    text = "  Leading space. ＡＢＣ full width.\r\n\r\n次の文。  "
    spans = split_sentences(text)
    assert [text[s:e] for s, e in spans] == ["Leading space.", "ＡＢＣ full width.", "次の文。"]
    assert all(text[s:e] == text[s:e].strip() for s, e in spans)


def test_split_sentences_of_nothing() -> None:
    assert split_sentences("") == [] and split_sentences(" \n\n ") == []


# --- detect_language ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("バックアップの復元手順は？", "ja"),
        ("Azure Functions のバックアップ手順を教えてください", "ja"),
        ("How do I restore a backup?", "en"),
        ("The runbook (運用手順書) explains how to restore the index from a backup.", "en"),
        ("", "en"),
        ("12345", "en"),
    ],
)
def test_detect_language(text: str, language: str) -> None:
    assert detect_language(text) == language


# --- best_snippet ---------------------------------------------------------------------------------


def test_snippet_is_the_sentence_with_most_query_terms() -> None:
    content = "Backups run daily. To restore the index, stop intake and restore the backup. Alerts are separate."
    assert best_snippet(content, "restore backup") == "To restore the index, stop intake and restore the backup."
    assert best_snippet("毎日取得します。復元の手順は次の通りです。", "復元手順") == "復元の手順は次の通りです。"


def test_snippet_of_a_long_sentence_is_a_window_around_the_match() -> None:
    content = ("filler " * 100) + "the restore step " + ("tail " * 100)
    snippet = best_snippet(content, "restore")
    assert "restore" in snippet and len(snippet) <= 210
    assert snippet.startswith("…") and snippet.endswith("…")
    assert snippet.strip("…") in content


# --- chunk_document -------------------------------------------------------------------------------


def long_english(sections: int, seed: int = 3, most_sentences: int = 9) -> str:
    rng = random.Random(seed)
    words = "queue step checkpoint backup restore tenant policy budget index chunk citation report".split()
    parts = []
    for n in range(sections):
        parts.append(f"## Section {n}")
        body = " ".join(
            " ".join(rng.choice(words) for _ in range(rng.randint(5, 12))).capitalize() + "."
            for _ in range(rng.randint(2, most_sentences))
        )
        parts.append(body)
    return "# Handbook\n\n" + "\n\n".join(parts)


@pytest.mark.parametrize("max_chars", [80, 200, 800])
def test_every_chunk_is_an_exact_stripped_substring_within_the_limit(max_chars: int) -> None:
    for content in (long_english(30), RUNBOOK_JA, "x" * 2000, "単語" * 900):
        doc = Document(id="d", title="T", content=content)
        chunks = chunk_document(doc, max_chars=max_chars)
        assert [c.chunk_id for c in chunks] == list(range(len(chunks)))
        position = 0
        for chunk in chunks:
            assert chunk.content and chunk.content == chunk.content.strip()
            assert len(chunk.content) <= max_chars
            found = content.find(chunk.content, position)
            assert found >= position, "chunks appear in document order, without overlap"
            position = found + len(chunk.content)
            assert chunk.doc_id == "d" and chunk.title == "T"


def test_chunks_cover_every_sentence() -> None:
    content = long_english(20)
    chunks = chunk_document(Document(id="d", title="T", content=content), max_chars=300)
    joined = "\n".join(c.content for c in chunks)
    for sentence in sentences(content):
        assert sentence in joined


def test_sentences_are_never_split_when_they_fit() -> None:
    content = long_english(25)
    chunks = chunk_document(Document(id="d", title="T", content=content), max_chars=400)
    for sentence in sentences(content):
        assert any(sentence in c.content for c in chunks), sentence


def test_overlong_sentence_cut_at_runs_of_spaces_stays_stripped() -> None:
    content = "word   " * 60
    chunks = chunk_document(Document(id="d", title="T", content=content), max_chars=50)
    assert all(c.content == c.content.strip() and len(c.content) <= 50 for c in chunks)


def test_an_overlong_sentence_is_cut_at_the_limit() -> None:
    sentence = "word " * 99 + "end."
    chunks = chunk_document(Document(id="d", title="T", content=sentence), max_chars=100)
    assert len(chunks) > 1 and all(len(c.content) <= 100 for c in chunks)
    assert " ".join(c.content for c in chunks).split() == sentence.split()


def test_chunks_break_before_headings_and_pack_short_sections() -> None:
    content = long_english(20, most_sentences=4)  # every section fits in a chunk
    chunks = chunk_document(Document(id="d", title="T", content=content), max_chars=600)
    assert all(c.content.startswith("#") for c in chunks)
    assert len(chunks) < 20  # short sections share a chunk rather than one each
    assert not any(c.content.splitlines()[-1].startswith("#") for c in chunks)  # a heading goes with its text


def test_code_comments_are_not_headings() -> None:
    chunks = chunk_document(Document(id="d", title="T", content=RUNBOOK_JA), max_chars=160)
    assert not any(c.content.startswith("# これは見出し") for c in chunks)


def test_small_document_is_one_chunk() -> None:
    doc = Document(id="d", title="T", content="\n\n  One short passage.  \n")
    (chunk,) = chunk_document(doc)
    assert chunk.content == "One short passage." and chunk.key == "d--c0000"


def test_japanese_document_chunks_on_sentence_ends() -> None:
    content = "".join(f"{n}番目の手順ではバックアップを確認します。" for n in range(60))
    chunks = chunk_document(Document(id="ja", title="手順", content=content), max_chars=100)
    assert len(chunks) > 5
    assert all(c.content.endswith("。") for c in chunks)


# --- parse_upload ---------------------------------------------------------------------------------


def test_upload_title_from_first_heading_and_id_from_full_name() -> None:
    doc = parse_upload("docs/Backup and Restore (v2).md", "intro\n\n# Backup & Restore\n\n## Steps\ntext")
    assert doc.id.startswith("docs-Backup-and-Restore-v2-md-") and valid_doc_id(doc.id)
    assert doc.title == "Backup & Restore"
    assert doc.content.startswith("intro")


def test_upload_without_heading_is_titled_by_its_stem() -> None:
    doc = parse_upload("notes.txt", "## only a subheading\nbody")
    assert doc.id.startswith("notes-txt-") and doc.title == "notes"


def test_upload_normalizes_line_endings_and_bom() -> None:
    doc = parse_upload("a.md", "\ufeff# Title\r\nline one\r\nline two\r")
    assert doc.content == "# Title\nline one\nline two\n"
    assert doc.title == "Title"


def test_japanese_file_names_get_distinct_valid_ids() -> None:
    first = parse_upload("運用手順書.md", "# 運用手順書\n本文")
    second = parse_upload("障害対応.md", "本文")
    mixed = parse_upload("手順-backup.ja.md", "本文")
    for doc in (first, second, mixed):
        assert valid_doc_id(doc.id), (doc.id, DOC_ID_PATTERN)
    assert first.id != second.id
    assert first.title == "運用手順書" and second.title == "障害対応"
    assert mixed.id.startswith("backup-ja")


def test_empty_upload_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="empty.md"):
        parse_upload("empty.md", "\ufeff \r\n")


def test_upload_id_fits_the_length_limit() -> None:
    assert len(parse_upload("x" * 300 + ".md", "body").id) <= 100
