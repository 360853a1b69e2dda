"""Ingestion jobs end to end against `python -m shared.runtime`: kill -9 mid-ingest, and the API stays quick."""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import pytest

from shared.adapters.local.search import LocalKnowledgeIndex
from shared.contracts import Document
from shared.services.chunking import chunk_document
from shared.services.knowledge import document_id
from tests.fixtures.app import wait_for

pytestmark = pytest.mark.slow
WORDS = "queue step checkpoint backup restore tenant policy budget index chunk citation report tide".split()


def corpus(n: int) -> list[tuple[str, bytes]]:
    """n small Markdown runbooks, some long enough for several chunks."""
    files = []
    for i in range(n):
        sentences = [
            f"Step {i}.{k} checks the {WORDS[(i + k) % len(WORDS)]} and the {WORDS[(i * 7 + k) % len(WORDS)]}."
            for k in range(3 + i % 40)
        ]
        files.append((f"runbooks/rb-{i:05d}.md", f"# Runbook {i}\n\n{' '.join(sentences)}\n".encode()))
    return files


def expected_chunks(files: list[tuple[str, bytes]], chunk_chars: int = 800, overlap: int = 100) -> dict[str, int]:
    """Chunk counts of a clean ingest, computed without the runtime."""
    out = {}
    for name, data in files:
        text = data.decode()
        # The dev key's uploads go into its tenant's scope, which the derived id includes.
        doc = Document(id=document_id(name, "dev"), title=text.splitlines()[0][2:], content=text)
        out[doc.id] = len(chunk_document(doc, chunk_chars, overlap_chars=overlap))
    return out


def submit(client, files: list[tuple[str, bytes]], key: str) -> str:  # type: ignore[no-untyped-def]
    r = client.post(
        "/api/documents",
        files=[("file", (name, data, "text/markdown")) for name, data in files],
        headers={"Idempotency-Key": key},
    )
    assert r.status_code == 202, r.text
    return str(r.headers["location"])


def test_kill_9_mid_ingestion_then_restart_indexes_every_document_exactly_once(  # type: ignore[no-untyped-def]
    runtime, tmp_path: Path
) -> None:
    files = corpus(2000)
    env = {"MAX_BODY_BYTES": "8000000", "INGEST_BATCH_FILES": "50", "QUEUE_LOCK_SECONDS": "2"}
    data_dir = tmp_path / "ingest-crash"
    rt = runtime(env, data_dir)
    with rt.client() as client:
        location = submit(client, files, "bulk-2000")
        wait_for(lambda: client.get(location).json()["files_done"] >= 300, timeout=120, interval=0.02)
    rt.kill9()
    with _Index(data_dir) as index:
        at_kill = index.count()
    assert 0 < at_kill, "the kill came after some documents were indexed"

    rt2 = runtime(env, data_dir)
    with rt2.client() as client:
        job = wait_for(
            lambda: (j := client.get(location).json())["status"] in ("succeeded", "failed") and j,
            timeout=300,
            interval=0.2,
        )
        assert job["status"] == "succeeded", job
        assert job["files_done"] == 2000 and job["refused"] == 0
        assert job["added"] + job["updated"] + job["unchanged"] == 2000
        listed = client.get("/api/documents", params={"limit": 5000}).json()
    assert at_kill < sum(expected_chunks(files).values()), "the kill came before the end"

    expected = expected_chunks(files)
    print(
        f"kill -9 at {at_kill} of {sum(expected.values())} chunks; after restart: {job['added']} added, "
        f"{job['unchanged']} redone as unchanged"
    )
    with _Index(data_dir) as index:
        assert index.count() == sum(expected.values())
        for doc_id, count in expected.items():
            chunks = index.get_chunks(doc_id)
            assert [c.chunk_id for c in chunks] == list(range(count)), doc_id
            assert len({c.version for c in chunks}) == 1
    assert len(listed) == 2000 and {d["id"]: d["chunks"] for d in listed} == expected


def test_jobs_listing_stays_fast_during_a_large_ingestion(runtime, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = {"MAX_BODY_BYTES": "8000000", "INGEST_BATCH_FILES": "50"}
    rt = runtime(env, tmp_path / "ingest-latency")
    files = corpus(1500)
    with rt.client() as client:
        ids = [client.post("/api/jobs", json={"task": f"What does runbook {n} check?"}).json()["id"] for n in range(3)]
        wait_for(lambda: all(client.get(f"/api/jobs/{i}").json()["status"] != "queued" for i in ids), timeout=60)
        latencies: list[float] = []
        started = threading.Event()
        stop = threading.Event()

        def poll() -> None:
            with rt.client() as reader:
                for _ in range(5):  # connection set up and first-request costs are not what is measured
                    reader.get("/api/jobs")
                started.wait()
                while not stop.is_set():
                    t0 = time.perf_counter()
                    assert reader.get("/api/jobs").status_code == 200
                    latencies.append((time.perf_counter() - t0) * 1000)
                    time.sleep(0.02)

        readers = [threading.Thread(target=poll) for _ in range(2)]
        for reader in readers:
            reader.start()
        location = submit(client, files, "bulk-latency")
        started.set()
        try:
            wait_for(lambda: client.get(location).json()["files_done"] >= 1000, timeout=180, interval=0.1)
        finally:
            stop.set()
            for reader in readers:
                reader.join()
        during = client.get(location).json()
    assert len(latencies) >= 20
    p95 = statistics.quantiles(latencies, n=20)[-1]
    print(
        f"GET /api/jobs during ingestion: n={len(latencies)} median {statistics.median(latencies):.1f} ms "
        f"p95 {p95:.1f} ms max {max(latencies):.1f} ms"
    )
    # The bar is the 95th percentile: on a shared 2-core machine a single request can stall on the OS
    # whatever the app does; a regression (ingestion on the event loop, a lock held) moves p95 past it.
    assert p95 < 200, f"GET /api/jobs p95 {p95:.0f} ms during ingestion (max {max(latencies):.0f} ms)"
    assert statistics.median(latencies) < 100
    assert during["status"] == "running" or during["files_done"] >= 1000


class _Index:
    """The runtime's index file, opened read-side by the test, closed afterwards."""

    def __init__(self, data_dir: Path) -> None:
        self.index = LocalKnowledgeIndex(data_dir / "search.sqlite3")

    def __enter__(self) -> LocalKnowledgeIndex:
        return self.index

    def __exit__(self, *exc: object) -> None:
        self.index.close()
