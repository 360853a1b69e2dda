"""A step's follow-up sends commit with its completion (the embedded runtime's output binding).

The commit point stays checkpoint n (create-only, fsync'd); the queue transaction that completes
step n and sends step n+1 needs no fsync, because losing it (a process or OS crash before it)
leaves step n's message in the queue, whose redelivery finds checkpoint n and re-does the follow-up.
"""

from __future__ import annotations

from typing import Any

import pytest

from shared.engine.backends import Backends
from shared.engine.ledger import month_of
from shared.engine.steps import handle_step
from shared.runtime.consumer import QueueConsumer
from shared.runtime.functions import QueueFunction, discover
from tests.fixtures.app import ingest_samples, wait_for
from tests.service.test_step_engine import consume, submit


@pytest.fixture
def short_locks(app_env: dict[str, str]) -> None:
    app_env.update({"QUEUE_LOCK_SECONDS": "0.5"})


def test_the_consumer_commits_a_steps_sends_with_its_completion_not_before(backends: Backends) -> None:
    seen_while_running: list[list[str]] = []

    def run(msg: Any) -> None:
        backends.queue.send(b"{}", message_id="follow-up", continuation=True)
        seen_while_running.append([m.message_id for m in backends.queue.peek_live()])  # type: ignore[attr-defined]

    function = QueueFunction(name="probe", queue="agent-jobs", connection="", run=run, arg_name="msg")
    consumer = QueueConsumer(backends.queue, function, concurrency=1, max_lock_renewal_seconds=30)  # type: ignore[arg-type]
    backends.queue.send(b"{}", message_id="first")
    consumer.start()
    try:
        wait_for(lambda: len(seen_while_running) >= 2, timeout=10)
    finally:
        consumer.stop()
    # While "first" ran, its follow-up was held; it appeared with the completion of "first".
    assert seen_while_running[:2] == [["first"], ["follow-up"]]


def test_a_crash_between_checkpoint_and_completion_still_finishes_the_job_once(
    short_locks: None, backends: Backends
) -> None:
    ingest_samples(backends)
    job = submit(backends)
    queue: Any = backends.queue
    crashed = []
    for _ in range(3):  # steps 1-3 each commit, then the process "dies" before complete + send
        [message] = queue.receive(1, wait_seconds=2.0)
        with queue.collecting_sends() as sends:
            handle_step(backends, message.body, message.delivery_count)
        assert sends, "the step sent its follow-up"
        crashed.append(message.message_id)  # held sends dropped, message never completed
    assert crashed == [f"{job.id}:1", f"{job.id}:1", f"{job.id}:1"]  # only redeliveries of step 1 run
    assert backends.checkpoints.steps(job.id) == [1]

    finished = consume(backends, job.id)
    assert finished.status == "succeeded", finished.error
    steps = backends.checkpoints.steps(job.id)
    assert steps == list(range(1, finished.step + 1))
    assert [p.step for p in finished.progress] == steps
    assert backends.ledger.by_job("dev", month_of(finished.created_at))[job.id] == finished.usage
    assert backends.ledger.total("dev", month_of(finished.created_at)) == finished.usage
    counts = queue.counts()
    assert (counts.active, counts.scheduled, counts.dead_lettered) == (0, 0, 0)


def test_a_worker_goes_from_step_to_step_without_a_receive_of_its_own(backends: Backends) -> None:
    """The completion of step n claims step n+1 for the same worker, in the same transaction."""
    ingest_samples(backends)
    queue: Any = backends.queue
    received: list[str] = []
    receive = queue.receive

    def counted(*args: Any, **kwargs: Any) -> Any:
        messages = receive(*args, **kwargs)
        received.extend(m.message_id for m in messages)
        return messages

    queue.receive = counted
    job = submit(backends)
    fn = discover("function_app").queues[0]
    consumer = QueueConsumer(backends.queue, fn, concurrency=1, max_lock_renewal_seconds=30)  # type: ignore[arg-type]
    consumer.start()
    try:
        done = wait_for(lambda: (j := backends.jobs.get(job.id)) is not None and j.finished and j, timeout=30)
    finally:
        consumer.stop()
    assert done.status == "succeeded" and done.step > 2
    assert received == [f"{job.id}:1"]  # steps 2.. came with the completions
