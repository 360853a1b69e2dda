"""A long job's progress: the record keeps one page of it, earlier pages live in their own objects.

Before, every step rewrote the whole progress list, so a step's cost grew with the job's length.
Readers (GET /api/jobs/{id}, listings, events) still see every line, in order, exactly once, also
after a step that crashed between writing a page and dropping its lines from the record.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from shared.contracts import Job, Policy, Usage, utcnow
from shared.engine import layout
from shared.engine.backends import Backends
from shared.engine.job import summary
from shared.engine.repositories import PROGRESS_PAGE_STEPS
from shared.maintenance import retention
from shared.ports import ModelTurn, ToolCall
from shared.services import events
from tests.fixtures.app import ingest_samples
from tests.service.test_step_engine import submit
from tests.service.test_step_writes import _run_to_end


class SearchingModel:
    """The offline model, made to search `turns` times before it reports (two steps a turn: model, tool)."""

    name = "offline-searching"
    offline = True

    def __init__(self, turns: int) -> None:
        from shared.adapters.local.offline_model import OfflineModel

        self.turns, self.inner = turns, OfflineModel()

    def ping(self) -> None:
        return None

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Any:
        done = sum(1 for m in messages if m.get("role") == "assistant")
        if done >= self.turns:
            return self.inner.complete(messages, tools)
        query = json.dumps({"query": f"dead letters {done}"})
        call = ToolCall(id=f"call_{done}", name="search_knowledge", arguments=query)
        usage = Usage(prompt_tokens=10, completion_tokens=5)
        return ModelTurn(content=None, tool_calls=[call], usage=usage, model=self.name)


@pytest.fixture
def long_jobs(backends: Backends) -> Backends:
    ingest_samples(backends)
    backends.model = SearchingModel(turns=PROGRESS_PAGE_STEPS + 5)  # type: ignore[assignment]
    backends.settings.policy_defaults = Policy(max_steps=8 * PROGRESS_PAGE_STEPS, max_tokens=10**9)
    return backends


def _stored(b: Backends, job_id: str) -> Job:
    found = b.objects.get(layout.job_key(job_id))
    assert found is not None
    return Job.model_validate_json(found.data)


def _from_checkpoints(b: Backends, job: Job) -> list[Any]:
    return [summary(cp) for n in range(1, job.step + 1) if (cp := b.checkpoints.get(job.id, n)) is not None]


def test_a_long_jobs_record_holds_one_page_and_readers_see_every_step(long_jobs: Backends) -> None:
    b = long_jobs
    job = submit(b)
    sizes: list[int] = []
    _run_to_end(b, on_step=lambda _m: sizes.append(len(_stored(b, job.id).progress)))
    final = b.jobs.get(job.id)
    assert final is not None and final.status == "succeeded", final.error
    assert final.step > 2 * PROGRESS_PAGE_STEPS
    # The stored record never held more than a page (plus the step that sealed the one before).
    assert max(sizes) <= PROGRESS_PAGE_STEPS + 1
    assert len(_stored(b, job.id).progress) <= PROGRESS_PAGE_STEPS + 1
    assert len(list(b.objects.list(f"{layout.PROGRESS.name}/{job.id}/"))) == final.step // PROGRESS_PAGE_STEPS
    # Readers see every step once, in order, as the checkpoints tell it.
    assert [p.step for p in final.progress] == list(range(1, final.step + 1))
    assert final.progress == _from_checkpoints(b, final)
    listed = next(j for _, j in b.jobs.list_for_tenant("dev") if j.id == job.id)
    assert listed.progress == final.progress
    steps = [e for e in events.derive(final) if e.type == "step"]
    assert [e.data["step"] for e in steps] == list(range(1, final.step + 1))


def test_a_step_that_crashed_after_writing_its_page_is_redelivered_to_the_same_progress(long_jobs: Backends) -> None:
    b = long_jobs
    job = submit(b)
    update = b.jobs.update
    crashed: list[int] = []

    def crash_once_at_a_page_boundary(job_id: str, transition: Any, **kw: Any) -> Any:
        stored = _stored(b, job_id)
        if not crashed and stored.step == PROGRESS_PAGE_STEPS and stored.progress[0].step == 1:
            crashed.append(stored.step)  # seal_pages has just written page 0; the record still holds its lines
            raise OSError("the process died between the page and the record")
        return update(job_id, transition, **kw)

    b.jobs.update = crash_once_at_a_page_boundary  # type: ignore[method-assign]
    queue: Any = b.queue
    while messages := queue.receive(1, wait_seconds=0.0):
        from shared.engine.steps import handle_step

        try:
            with queue.collecting_sends() as sends:
                handle_step(b, messages[0].body, messages[0].delivery_count)
        except OSError:
            queue.abandon(messages[0])  # redelivered, as after a crash
            continue
        queue.complete(messages[0], sends=sends)
    assert crashed == [PROGRESS_PAGE_STEPS]
    final = b.jobs.get(job.id)
    assert final is not None and final.status == "succeeded", final.error
    assert [p.step for p in final.progress] == list(range(1, final.step + 1))
    assert final.progress == _from_checkpoints(b, final)


def test_retention_deletes_a_jobs_pages_with_it(long_jobs: Backends) -> None:
    b = long_jobs
    job = submit(b)
    _run_to_end(b)
    assert list(b.objects.list(f"{layout.PROGRESS.name}/{job.id}/"))
    later = utcnow() + timedelta(days=b.settings.job_retention_days + 1)
    assert retention.apply_retention(b, now=later).jobs_deleted == 1
    assert list(b.objects.list(f"{layout.PROGRESS.name}/{job.id}/")) == []
    assert b.jobs.get(job.id) is None


def test_a_record_written_before_pages_existed_reads_unchanged(backends: Backends) -> None:
    """Records stored whole (every line from step 1) need no page: nothing is read for them."""
    ingest_samples(backends)
    job = submit(backends)
    _run_to_end(backends)
    stored = _stored(backends, job.id)
    assert stored.progress[0].step == 1
    assert backends.jobs.whole(stored) is stored
