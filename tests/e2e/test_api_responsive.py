"""The API does not block: GET /api/jobs answers in under 200 ms, every time, while a bulk upload is ingested.

Against `python -m shared.runtime` (as an operator runs it): a poller asks GET /api/jobs every
50 ms from before the upload until its ingestion job has finished, and every answer must come in
under 200 ms, not just most of them. A shared 2-core machine stalls now and then whatever runs on
it (a stdlib http.server beside the runtime, polled the same way, measured up to 157 ms), so a
scenario that misses the bound runs once more on a fresh runtime and must meet it then; an app
that blocks its event loop (ingestion on the loop, a held GIL) misses it every time.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.fixtures.app import RuntimeProcess, wait_for

pytestmark = pytest.mark.slow
BOUND_MS = 200.0


@contextmanager
def polling_jobs(rt: RuntimeProcess, every: float = 0.05) -> Iterator[list[float]]:
    """GET /api/jobs every `every` s while the block runs; yields the latencies (ms), filled as it goes."""
    latencies: list[float] = []
    stop = threading.Event()
    failures: list[str] = []

    def poll() -> None:
        with rt.client() as reader:
            for _ in range(3):  # connection set-up and first-request costs are not what is measured
                reader.get("/api/jobs")
            while not stop.is_set():
                t0 = time.perf_counter()
                r = reader.get("/api/jobs")
                latencies.append((time.perf_counter() - t0) * 1000)
                if latencies[-1] > 100:
                    print(f"slow GET at {t0 - started:.2f} s: {latencies[-1]:.0f} ms")
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                stop.wait(every)

    started = time.perf_counter()
    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.3)
    try:
        yield latencies
    finally:
        stop.set()
        poller.join()
    assert not failures, failures


def finished(client: httpx.Client, location: str) -> Callable[[], dict | None]:  # type: ignore[type-arg]
    def check() -> dict | None:  # type: ignore[type-arg]
        job: dict = client.get(location).json()  # type: ignore[type-arg]
        return job if job["status"] in ("succeeded", "failed") else None

    return check


def within_bound(scenario: Callable[[], list[float]], what: str) -> None:
    """Run scenario (it returns the GET latencies); once more if a GET missed the bound; the last run decides."""
    for attempt in (1, 2):
        latencies = scenario()
        assert len(latencies) >= 50
        slowest, median = max(latencies), statistics.median(latencies)
        print(f"{what}, attempt {attempt}: n={len(latencies)} p50 {median:.1f} ms max {slowest:.1f} ms")
        if slowest < BOUND_MS:
            return
    raise AssertionError(f"{what}: slowest GET {slowest:.0f} ms (p50 {median:.0f} ms) in both attempts")


def test_jobs_answer_fast_while_20000_json_documents_are_ingested(runtime, tmp_path) -> None:  # type: ignore[no-untyped-def]
    docs = [{"id": f"d{i:05d}", "title": "T", "content": f"q{i}"} for i in range(20_000)]
    body = json.dumps(docs, separators=(",", ":")).encode()
    assert 800_000 < len(body) < 1_000_000  # ~900 KB: under the default MAX_BODY_BYTES
    runs = iter(range(1, 3))

    def scenario() -> list[float]:
        rt = runtime(data_dir=tmp_path / f"json-{next(runs)}")
        with rt.client() as client, polling_jobs(rt) as latencies:
            r = client.post("/api/documents", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 202, r.text  # a large JSON upload is an ingestion job, as a multipart one
            job = wait_for(finished(client, r.headers["location"]), timeout=240, interval=0.2)
        assert job["status"] == "succeeded" and job["added"] == 20_000 and job["chunks"] == 20_000, job
        rt.stop()
        return latencies

    within_bound(scenario, "GET /api/jobs during the ingestion of 20,000 JSON documents")


def test_jobs_answer_fast_while_a_large_multipart_upload_is_ingested(runtime, tmp_path) -> None:  # type: ignore[no-untyped-def]
    files = [
        ("file", (f"notes/n-{i:05d}.md", f"# Note {i}\n\nStep {i} checks the queue.\n", "text/markdown"))
        for i in range(5000)
    ]
    runs = iter(range(1, 3))

    def scenario() -> list[float]:
        rt = runtime({"MAX_BODY_BYTES": "4000000"}, data_dir=tmp_path / f"multipart-{next(runs)}")
        with rt.client() as client, polling_jobs(rt) as latencies:
            r = client.post("/api/documents", files=files)
            assert r.status_code == 202, r.text
            job = wait_for(finished(client, r.headers["location"]), timeout=240, interval=0.2)
        assert job["status"] == "succeeded" and job["added"] == 5000, job
        rt.stop()
        return latencies

    within_bound(scenario, "GET /api/jobs during the ingestion of a 5,000-file multipart upload")
