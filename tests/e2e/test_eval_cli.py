"""agentctl eval against a running app over HTTP, as CI would gate a deployment on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.app import ingest_over_http as ingest
from tests.fixtures.cli import run_cli

pytestmark = pytest.mark.slow


def test_eval_over_http_writes_json_and_markdown_and_gates_on_the_baseline(runtime, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rt = runtime()
    with rt.client() as client:
        ingest(client)
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        "\n".join(
            json.dumps(q, ensure_ascii=False)
            for q in [
                {"question": "How is a restore verified?", "expected_docs": ["backup-and-restore"], "language": "en"},
                {"question": "バックアップの復元手順は？", "must_include": ["チェックサム"], "language": "ja"},
            ]
        ),
        encoding="utf-8",
    )
    out, page = tmp_path / "run.json", tmp_path / "run.md"

    first = run_cli(
        "eval", str(questions), "--url", rt.url, "--out", str(out), "--markdown", str(page), data_dir=tmp_path
    )

    assert first.code == 0, first.stderr
    summary = first.data["summary"]
    assert summary["questions"] == 2 and summary["success_rate"] == 1.0
    assert summary["verbatim_quote_share"] == 1.0 and summary["language_match_rate"] == 1.0
    assert first.data["model"] == "offline-extractive"
    assert json.loads(out.read_text())["summary"] == summary
    assert "| job success | 100.0% |" in page.read_text()

    # Against its own figures the run holds; against a better baseline it fails the gate.
    same = run_cli("eval", str(questions), "--url", rt.url, "--baseline", str(out), data_dir=tmp_path)
    assert same.code == 0 and same.data["regressions"] == []
    better = tmp_path / "better.json"
    better.write_text(
        json.dumps(
            {
                "summary": {
                    **summary,
                    "cited_source_hit_rate": 1.0,
                    "must_include_rate": 1.0,
                    "citation_precision": 1.0,
                    "questions": 2,
                }
            }
        )
    )
    questions.write_text(
        json.dumps({"question": "How is a restore verified?", "expected_docs": ["alerts"], "must_include": ["zebra"]}),
        encoding="utf-8",
    )

    worse = run_cli("eval", str(questions), "--url", rt.url, "--baseline", str(better), data_dir=tmp_path)

    assert worse.code == 1
    assert {g["metric"] for g in worse.data["regressions"]} >= {"cited_source_hit_rate", "must_include_rate"}


def test_eval_names_the_fix_when_no_app_answers(tmp_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "a"}\n', encoding="utf-8")

    result = run_cli("eval", str(questions), "--url", "http://127.0.0.1:9", data_dir=tmp_path)

    assert result.code != 0
    assert "make serve" in result.stdout + result.stderr
