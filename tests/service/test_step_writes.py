"""What one step writes and reads: the record read once, one fsync for a job's last step's writes.

The commit point stays checkpoint n (create-only, fsync'd). What follows it is a projection a
redelivery repeats, so only its order on disk matters: the embedded store's WAL reaches the disk
in order, so one durable write at the end of a job's last step carries the report, the record and
the provenance written before it, before the message's completion (another file) can be.
"""

from __future__ import annotations

from typing import Any

from shared.engine import job as lifecycle
from shared.engine import layout
from shared.engine.backends import Backends
from shared.engine.ledger import month_of
from shared.engine.steps import handle_step
from tests.fixtures.app import ingest_samples
from tests.service.test_step_engine import submit


def _run_to_end(b: Backends, on_step: Any = None) -> int:
    """Run every step in this thread as the runtime does (sends commit with the completion)."""
    queue: Any = b.queue
    steps = 0
    while messages := queue.receive(1, wait_seconds=0.0):
        with queue.collecting_sends() as sends:
            if on_step is not None:
                on_step(messages[0])
            handle_step(b, messages[0].body, messages[0].delivery_count)
        queue.complete(messages[0], sends=sends)
        steps += 1
    return steps


def _record_writes(b: Backends, log: list[tuple[str, bool]]) -> None:
    objects: Any = b.objects
    put, put_if_absent = objects.put, objects.put_if_absent

    def recorded_put(key: str, data: bytes, *, if_match: str | None = None, durable: bool = True) -> str:
        log.append((key, durable))
        return put(key, data, if_match=if_match, durable=durable)

    def recorded_put_if_absent(key: str, data: bytes) -> str:
        log.append((key, True))
        return put_if_absent(key, data)

    objects.put, objects.put_if_absent = recorded_put, recorded_put_if_absent


def test_a_jobs_last_step_fsyncs_once_after_everything_it_wrote(backends: Backends) -> None:
    ingest_samples(backends)
    job = submit(backends)
    writes: list[tuple[str, bool]] = []
    _record_writes(backends, writes)

    def next_step(message: Any) -> None:
        writes.clear()  # keep only the step that runs now: the last one, at the end

    _run_to_end(backends, on_step=next_step)
    last = writes
    final = backends.jobs.get(job.id)
    assert final is not None and final.status == "succeeded"
    assert last[0] == (layout.checkpoint_key(job.id, final.step), True)  # the commit point
    written = {key for key, _ in last[1:]}
    month = month_of(job.created_at)
    assert {layout.job_key(job.id), layout.report_key(job.id), layout.ledger_key(month, "dev")} <= written
    assert last[-1] == (layout.ledger_job_key(month, "dev", job.id), True)
    # Everything after the checkpoint waits for one fsync: the last write, which carries the rest.
    assert [durable for _, durable in last[1:]] == [False] * (len(last) - 2) + [True]


def test_a_step_reads_its_job_record_once(backends: Backends) -> None:
    ingest_samples(backends)
    job = submit(backends)
    objects: Any = backends.objects
    get, reads = objects.get, []
    objects.get = lambda key: (reads.append(key) if key == layout.job_key(job.id) else None) or get(key)
    queue: Any = backends.queue
    [message] = queue.receive(1)
    with queue.collecting_sends():
        handle_step(backends, message.body, message.delivery_count)
    assert reads == [layout.job_key(job.id)]
    assert backends.jobs.get(job.id).step == 1  # type: ignore[union-attr]


def test_a_record_changed_during_the_step_is_projected_onto_the_change(backends: Backends) -> None:
    """The projection's write stays conditional: a cancel that lands mid-step is kept, and the step too."""
    ingest_samples(backends)
    job = submit(backends)
    commit = backends.checkpoints.commit

    def cancel_then_commit(cp: Any) -> bool:
        backends.jobs.update(job.id, lifecycle.request_cancel)  # another request, while the step ran
        return commit(cp)

    backends.checkpoints.commit = cancel_then_commit  # type: ignore[method-assign]
    queue: Any = backends.queue
    [message] = queue.receive(1)
    with queue.collecting_sends():
        handle_step(backends, message.body, message.delivery_count)
    record = backends.jobs.get(job.id)
    assert record is not None and record.cancel_requested
    assert record.step == 1 and [p.step for p in record.progress] == [1]
