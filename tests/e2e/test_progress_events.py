"""Progress events over real HTTP against the embedded runtime: resume exactly after Last-Event-ID, also
across a kill -9; heartbeats while a job waits for approval; ten concurrent approvals resume it once."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from shared.adapters.local.blobs import LocalObjectStore
from shared.engine.repositories import CheckpointStore
from tests.fixtures.app import ingest_over_http
from tests.fixtures.sse import Sse, read_events

pytestmark = pytest.mark.slow
TERMINAL = {"succeeded", "failed", "cancelled"}
QUESTION = "How does the sweep handle dead-lettered messages?"


def stream(client: httpx.Client, job_id: str, last: int | None = None):  # type: ignore[no-untyped-def]
    headers = {"Accept": "text/event-stream", **({"Last-Event-ID": str(last)} if last is not None else {})}
    return client.stream("GET", f"/api/jobs/{job_id}/events", headers=headers, timeout=60)


def test_reconnect_with_last_event_id_gets_exactly_the_rest_also_after_kill_9(runtime, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = {"OFFLINE_MODEL_LATENCY_MS": "300", "QUEUE_LOCK_SECONDS": "2"}
    data_dir = tmp_path / "events"
    rt = runtime(env, data_dir)
    seen: list[Sse] = []
    with rt.client() as client:
        ingest_over_http(client)
        job_id = client.post("/api/jobs", json={"task": QUESTION}).json()["id"]
        with stream(client, job_id) as r:  # first connection: leave after event 2
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            for event in read_events(r):
                seen.append(event)
                if event.id == 2:
                    break
        with stream(client, job_id, last=2) as r:  # same instance: leave after event 3
            for event in read_events(r):
                seen.append(event)
                break
    k = seen[-1].id
    assert [e.id for e in seen] == [1, 2, 3] and seen[0].event == "queued" and k == 3
    rt.kill9()

    rt2 = runtime(env, data_dir)
    with rt2.client() as client, stream(client, job_id, last=k) as r:
        rest = list(read_events(r))  # the stream ends by itself after the terminal event
        everything = client.get(f"/api/jobs/{job_id}/events").json()
    assert [e.id for e in rest] == list(range(k + 1, k + 1 + len(rest)))
    assert rest[-1].event in TERMINAL and rest[-1].event == "succeeded", rest[-1]
    assert [e["id"] for e in everything["events"]] == [e.id for e in seen + rest]
    assert [e["type"] for e in everything["events"]] == [e.event for e in seen + rest]
    assert everything["ended"] is True
    steps = [e.data["data"]["step"] for e in seen + rest if e.event == "step"]
    assert steps == CheckpointStore(LocalObjectStore(data_dir / "blobs")).steps(job_id)  # each step told once


def test_waiting_job_streams_heartbeats_and_ten_concurrent_approvals_resume_it_once(runtime) -> None:  # type: ignore[no-untyped-def]
    rt = runtime({"EVENTS_HEARTBEAT_SECONDS": "0.2", "EVENTS_POLL_SECONDS": "5"})
    comments: list[str] = []
    with rt.client() as client:
        ingest_over_http(client)
        r = client.post("/api/jobs", json={"task": QUESTION, "policy": {"approval": "before_report"}})
        job_id = r.json()["id"]
        events: list[Sse] = []

        def approve(i: int) -> int:
            with rt.client() as c:
                return c.post(f"/api/jobs/{job_id}/approve", json={"comment": f"go {i}"}).status_code

        def approve_ten_at_once_later() -> list[int]:
            time.sleep(1.0)  # the job stays parked meanwhile: the stream must carry heartbeats
            with ThreadPoolExecutor(10) as pool:
                return list(pool.map(approve, range(10)))

        with ThreadPoolExecutor(1) as approver, stream(client, job_id) as r:
            codes = None
            for event in read_events(r, comments):
                events.append(event)
                if event.event == "waiting_for_approval":
                    parked_at = len(comments)
                    codes = approver.submit(approve_ten_at_once_later)
                if event.event == "approved":
                    heartbeats_while_parked = len(comments) - parked_at
            assert codes is not None and codes.result() == [200] * 10
        job = client.get(f"/api/jobs/{job_id}").json()
    types = [e.event for e in events]
    assert types.count("waiting_for_approval") == 1 and types.count("approved") == 1
    assert types[-2:] == ["report_ready", "succeeded"]
    assert job["status"] == "succeeded" and len(job["approvals"]) == 1
    assert [p["step"] for p in job["progress"]] == list(range(1, job["step"] + 1))
    # Heartbeats came while the job was quiet; in-process wake-ups brought events despite a 5 s poll.
    assert heartbeats_while_parked >= 3 and all(c == ": heartbeat" for c in comments)


def test_events_are_tenant_scoped_and_paged_as_json(runtime) -> None:  # type: ignore[no-untyped-def]
    keys = '{"dev-local-key": {"tenant": "dev", "role": "operator"}, "key-acme": {"tenant": "acme"}}'
    rt = runtime({"API_KEYS": keys})
    with rt.client() as client:
        ingest_over_http(client)
        job_id = client.post("/api/jobs", json={"task": QUESTION}).json()["id"]
        page = client.get(f"/api/jobs/{job_id}/events", params={"after": 0, "wait": 30}).json()
        assert page["events"] and page["events"][0]["type"] == "queued"
        with rt.client("key-acme") as other:
            assert other.get(f"/api/jobs/{job_id}/events").status_code == 404
            assert other.get(f"/api/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}).status_code == 404
        after, ids = 0, []
        while True:  # long-poll until the end, as a client without SSE would
            page = client.get(f"/api/jobs/{job_id}/events", params={"after": after, "wait": 30}).json()
            ids += [e["id"] for e in page["events"]]
            after = page["next_after"]
            if page["ended"]:
                break
        assert ids == list(range(1, after + 1))
