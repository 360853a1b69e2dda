"""The embedded runtime's log rotates by size, and `agentctl logs` reads the rotated files too."""

from __future__ import annotations

import logging
from pathlib import Path

from shared.cli.logs import read_log_lines
from shared.observability.logs import log_files, rotating_log_file


def test_the_log_stays_within_its_bound_and_reads_back_in_order_across_files(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "runtime.jsonl"
    handler = rotating_log_file(path, max_bytes=4_000, backups=2)
    logger = logging.Logger("test.rotation")
    logger.addHandler(handler)
    for n in range(200):
        logger.info("line %03d %s", n, "x" * 40, extra={"job_id": "job-1" if n % 2 else "job-2"})
    handler.close()

    files = log_files(path)
    assert [p.name for p in files] == ["runtime.jsonl.2", "runtime.jsonl.1", "runtime.jsonl"]
    assert all(p.stat().st_size <= 4_000 for p in files), "each file is cut at max_bytes"

    lines = [r["message"] for r in read_log_lines(path, job_id=None, level=None, since=None)]
    numbers = [int(m.split()[1]) for m in lines]
    assert numbers == sorted(numbers) and numbers[-1] == 199, "oldest first, across the rotated files"
    assert 0 not in numbers, "the oldest lines went with the file past the bound"
    only = list(read_log_lines(path, job_id="job-1", level=None, since=None))
    assert only and all(r["job_id"] == "job-1" for r in only)


def test_rotation_off_keeps_one_file(tmp_path: Path) -> None:
    path = tmp_path / "runtime.jsonl"
    handler = rotating_log_file(path, max_bytes=0, backups=3)
    logger = logging.Logger("test.rotation.off")
    logger.addHandler(handler)
    for _ in range(100):
        logger.info("y" * 100)
    handler.close()
    assert log_files(path) == [path]
