"""`make demo` as a newcomer sees it in CI or a file: piped, so plain and unwrapped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.app import ROOT

pytestmark = pytest.mark.slow


def clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("AZURE_", "OPENAI_", "SEARCH_", "ServiceBus", "AzureWebJobs", "APP_ENV", "OFFLINE_MODEL", "DATA_DIR")
        )
    }


def test_piped_demo_says_which_model_prints_cited_reports_and_next_steps(tmp_path: Path) -> None:
    env = clean_env()
    data_dir = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "scripts.demo", "--data-dir", str(data_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "model: the offline extractive model" in out
    assert "AZURE_OPENAI_ENDPOINT" in out and "OPENAI_BASE_URL" in out and "docs/models.md" in out
    assert "simulated model latency" not in out
    # Not wrapped at 80 columns: the long question and each cited sentence stay on one line.
    assert (
        "== What happens when a step is delivered twice or a worker crashes, and how are dead-lettered "
        "messages handled?\n" in out
    )
    assert out.count("-- report --") == 2
    assert any(line.startswith("- [1] ") and line.endswith("”") and len(line) > 80 for line in out.splitlines())
    assert "_Written by the offline extractive model._" in out
    for step in (
        "make serve",
        "http://127.0.0.1:7071/api",
        "http://127.0.0.1:7071/api/docs",
        "-m shared.cli --help",
        "-m shared.cli jobs list",
    ):
        assert step in out
    assert "\x1b[" not in out  # no terminal escapes in a file
    assert (data_dir / "runtime.out").exists()


def test_deep_demo_prints_the_tree_and_a_section_per_sub_question(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.demo", "--deep", "--data-dir", str(tmp_path / "deep")],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "(deep research)" in out and "step  1 plan" in out and "step  2 compose" in out
    tree = [line for line in out.splitlines() if line.startswith(("  ├─ ", "  └─ "))]
    assert len(tree) == 3 and all(" succeeded, " in line for line in tree)
    report = out.split("-- report --")[1].split("-- end of report --")[0]
    assert report.count("\n## ") + report.startswith("\n## ") >= 3
