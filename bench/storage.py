"""Bounded storage: bytes stored after --jobs jobs and after a retention run, against the window's own jobs.

A few real jobs run first (offline model, samples/ corpus, each with an Idempotency-Key and a
session), so every kind of record a job leaves is the real one: record, listing marker, checkpoints,
report, per-job ledger record, idempotency record, session memory. Those are then copied under new
ids straight into the embedded store until there are --jobs finished jobs: --old-share of them
finished 150 days ago (past JOB_RETENTION_DAYS, in a closed month with its total), the rest 15
minutes ago (inside every window). Then the retention timer's own code runs (shared/maintenance/retention.py).

Anchor, same run: a store seeded with the in-window jobs alone, the least any retention can leave.
Figures: stored bytes (keys + values) after retention against that anchor, the share of the bytes
retention removed, and the runtime log's bytes on disk after writing far more than its rotation bound.

    python bench/storage.py [--jobs 10000] [--old-share 0.9]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sqlite3
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.figures import Figure, fmt, save, show  # noqa: E402
from bench.steps import QUESTION, TENANT, backends_at  # noqa: E402

TEMPLATES = 12
OLD_DAYS = 150
RECENT_DAYS = 1 / 96  # 15 minutes: inside every window (memory TTL, idempotency, jobs)


def run_templates(b: Any, n: int) -> list[str]:
    """Run n real jobs to completion on b; return their ids."""
    from shared.services import jobs as job_service
    from shared.services.messages import handle_message

    ids = []
    for i in range(n):
        request = job_service.JobRequest(task=QUESTION, session_id=f"session-{i}")
        ids.append(job_service.submit(b, TENANT, request, idempotency_key=f"template-{i}")[0].id)
    while messages := b.queue.receive(16, wait_seconds=0.2):
        for m in messages:
            handle_message(b, m.body, m.delivery_count)
            b.queue.complete(m)
    for job_id in ids:
        assert b.jobs.get(job_id).status == "succeeded", job_id
    return ids


def template_rows(b: Any, job_ids: list[str]) -> list[dict[str, Any]]:
    """Per template job: its objects by kind (key and value), read straight from the store."""
    from shared.engine import layout

    conn = sqlite3.connect(b.objects.path)
    every = conn.execute("SELECT key, data FROM objects").fetchall()
    conn.close()
    templates = []
    for job_id in job_ids:
        job = json.loads(next(d for k, d in every if k == layout.job_key(job_id)))
        mine = [
            (k, bytes(d)) for k, d in every if job_id in k or (k.startswith("idempotency/") and job_id.encode() in d)
        ]
        memory = next(bytes(d) for k, d in every if k == layout.memory_key(TENANT, job["session_id"]))
        templates.append({"job": job, "rows": mine, "memory": memory})
    return templates


def seed(b: Any, templates: list[dict[str, Any]], count: int, days_ago: float, prefix: str) -> None:
    """Copy the templates under `count` new ids, finished `days_ago`, straight into the store (one transaction)."""
    from shared.contracts import Job, utcnow
    from shared.engine import layout
    from shared.engine.ledger import month_of
    from shared.engine.repositories import JobStore

    finished = utcnow() - timedelta(days=days_ago)
    month = month_of(finished)
    at = finished.timestamp()
    rows: list[tuple[str, bytes, str, float]] = []
    totals: dict[str, int] = {}
    for i in range(count):
        t = templates[i % len(templates)]
        old_id, new_id = t["job"]["id"], f"job-{prefix}-{i:07d}"
        record = {**t["job"], "id": new_id, "session_id": f"{prefix}-{i}", "idempotency_key": f"{prefix}-{i}"}
        record["created_at"] = (finished - timedelta(seconds=5)).isoformat()
        record["finished_at"] = finished.isoformat()
        job = Job.model_validate(record)
        for key, data in t["rows"]:
            if key.startswith((layout.JOBS.name + "/", layout.TENANTS.name + "/")):
                continue  # rewritten below with the new dates
            if key.startswith(layout.LEDGERS.name + "/"):
                key = layout.ledger_job_key(month, TENANT, new_id)
                usage = json.loads(data)
                totals = {f: totals.get(f, 0) + int(usage.get(f, 0)) for f in ("prompt_tokens", "completion_tokens")}
            elif key.startswith(layout.IDEMPOTENCY.name + "/"):
                key = layout.idempotency_key(TENANT, hashlib.sha256(new_id.encode()).hexdigest())
                data = json.dumps({**json.loads(data), "at": at}).encode()
            rows.append((key.replace(old_id, new_id), data.replace(old_id.encode(), new_id.encode()), "e", at))
        memory = json.loads(t["memory"])
        memory["items"] = [{**item, "at": at} for item in memory["items"]]
        rows.append((layout.memory_key(TENANT, f"{prefix}-{i}"), json.dumps(memory).encode(), "e", at))
        rows.append((layout.job_key(new_id), job.model_dump_json().encode(), "e", at))
        rows.append((JobStore._tenant_marker(job), b"", "e", at))
    total = json.dumps({"total": {**totals, "cached_tokens": 0}, "recent": {}, "legacy": {}}).encode()
    rows.append((layout.ledger_key(month, TENANT), total, "e", at))
    conn = sqlite3.connect(b.objects.path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany("INSERT OR REPLACE INTO objects (key, data, etag, modified) VALUES (?, ?, ?, ?)", rows)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def stored_bytes(b: Any, skip: tuple[str, ...] = ("locks/",)) -> tuple[int, int]:
    """(objects, bytes of keys and values) in the embedded object store, leases aside."""
    conn = sqlite3.connect(b.objects.path)
    rows = conn.execute("SELECT key, length(key) + length(data) FROM objects").fetchall()
    conn.close()
    kept = [size for key, size in rows if not key.startswith(skip)]
    return len(kept), sum(kept)


def log_rotation(directory: Path, max_bytes: int, backups: int, written: int) -> int:
    """Bytes on disk of the runtime log and its rotated files after `written` bytes of JSON lines."""
    from shared.observability.logs import log_files, rotating_log_file

    path = directory / "runtime.jsonl"
    handler = rotating_log_file(path, max_bytes, backups)
    logger = logging.Logger("bench.storage")
    logger.addHandler(handler)
    line = "x" * 200
    for _ in range(written // 300):
        logger.info(line, extra={"job_id": "job-bench", "step": 1})
    handler.close()
    return sum(p.stat().st_size for p in log_files(path))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--old-share", type=float, default=0.9, help="share of jobs older than the window")
    args = parser.parse_args()
    from shared.maintenance import retention

    logging.getLogger("agent").setLevel(logging.WARNING)
    old = int(args.jobs * args.old_share)
    recent = args.jobs - old
    with tempfile.TemporaryDirectory() as tmp:
        source = backends_at(Path(tmp) / "templates", "FULL")
        templates = template_rows(source, run_templates(source, TEMPLATES))
        source.close()

        b = backends_at(Path(tmp) / "volume", "FULL")
        seed(b, templates, old, OLD_DAYS, "old")
        seed(b, templates, recent, RECENT_DAYS, "new")
        objects_before, before = stored_bytes(b)
        t0 = time.perf_counter()
        result = retention.apply_retention(b)
        took = time.perf_counter() - t0
        objects_after, after = stored_bytes(b)
        again = retention.apply_retention(b)
        assert again.jobs_deleted == 0 and again.checkpoints_deleted == 0, "a second run found more to delete"
        settings = b.settings
        b.close()

        anchor_b = backends_at(Path(tmp) / "window-only", "FULL")
        seed(anchor_b, templates, recent, RECENT_DAYS, "new")
        _, anchor = stored_bytes(anchor_b)
        anchor_b.close()

        max_bytes, backups = 1_000_000, 3
        log_bytes = log_rotation(Path(tmp) / "logs", max_bytes, backups, 20 * max_bytes)
    bound = max_bytes * (backups + 1)
    removed = 1 - after / before
    figures = [
        Figure(
            f"stored bytes after {args.jobs:,} jobs ({old:,} past the window) and one retention run "
            f"(before: {fmt(before / 1e6, 'MB')}, {objects_before:,} objects; after: {objects_after:,})",
            after / 1e6,
            "MB",
            "<= 1.05x the window's jobs alone",
            after <= 1.05 * anchor,
            f"{recent:,} in-window jobs alone",
            anchor / 1e6,
        ),
        Figure(
            f"share of stored bytes a retention run removes ({old:,} of {args.jobs:,} jobs past the window, "
            f"{took:.1f} s)",
            removed * 100,
            "%",
            f">= {args.old_share * 95:.0f}% (the old jobs' share, less 5%)",
            removed >= args.old_share * 0.95,
        ),
        Figure(
            "runtime log on disk after writing 20 MB (rotated at 1 MB, 3 kept)",
            log_bytes / 1e6,
            "MB",
            "<= the rotation bound",
            log_bytes <= bound,
            "bound: 4 files x 1 MB",
            bound / 1e6,
        ),
    ]
    context = (
        f"{TEMPLATES} real jobs (offline model, samples/ corpus, Idempotency-Key and session each) copied to "
        f"{args.jobs:,}: {old:,} finished {OLD_DAYS} days ago, {recent:,} 15 minutes ago; retention with "
        f"JOB_RETENTION_DAYS={settings.job_retention_days:g}, IDEMPOTENCY_RETENTION_HOURS="
        f"{settings.idempotency_retention_hours:g}, MEMORY_TTL_SECONDS={settings.memory_ttl_seconds:g}; bytes are "
        f"keys + values in the embedded store; deleted: {result.jobs_deleted:,} jobs, {result.checkpoints_deleted:,} "
        f"checkpoints, {result.ledger_records_deleted:,} ledger, {result.idempotency_records_deleted:,} idempotency, "
        f"{result.sessions_deleted:,} session records"
    )
    print(context)
    show(figures)
    save("storage", figures, context)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
