"""The StepQueue contract, run against every implementation.

The embedded queue always runs. Service Bus runs when SERVICEBUS_TEST_CONNECTION (a namespace
connection string) and SERVICEBUS_TEST_QUEUE (a queue with duplicate detection, used only by
tests: it is drained before and after each case) are set.

Dead-lettered messages only come from a receiver, so the suite also uses the consumer side
both adapters offer (receive, complete, dead_letter). Counts are compared against a baseline
taken at the start of each case, and polled, because Service Bus reports them with a lag.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.local.queue import LocalQueue
from shared.contracts import utcnow
from shared.errors import DependencyUnavailable
from shared.ports import QueueCounts, QueueMessage, StepQueue
from shared.settings import Settings


@dataclass
class QueueUnderTest:
    queue: Any  # a StepQueue with the consumer side
    receive_wait: float  # long enough for a message that is there to arrive
    absent_wait: float  # long enough to be sure a message is not coming
    schedule_delay: float  # how far ahead scheduled messages are set
    clock_tolerance: float  # skew between this machine and the broker
    counts_lag: float  # how long counts may trail the data plane

    def counts_become(self, expected: QueueCounts) -> QueueCounts:
        deadline = time.monotonic() + self.counts_lag
        while True:
            counts = self.queue.counts()
            if counts == expected or time.monotonic() >= deadline:
                return counts
            time.sleep(0.25)

    def receive_all(self) -> list[QueueMessage]:
        """Receive and complete everything deliverable now."""
        received: list[QueueMessage] = []
        while batch := self.queue.receive(max_count=10, wait_seconds=self.absent_wait):
            for message in batch:
                self.queue.complete(message)
            received.extend(batch)
        return received

    def drain(self) -> None:
        self.receive_all()
        while dead := self.queue.receive_dead_letters(max_count=100, lock_seconds=30):
            for message in dead:
                self.queue.complete_dead_letter(message)


def _embedded(tmp_path: Path) -> Iterator[QueueUnderTest]:
    queue = LocalQueue(tmp_path / "queue.db", lock_seconds=30)
    yield QueueUnderTest(
        queue, receive_wait=1.0, absent_wait=0.05, schedule_delay=0.3, clock_tolerance=0.01, counts_lag=0.0
    )
    queue.close()


def _servicebus() -> Iterator[QueueUnderTest]:
    connection = os.environ.get("SERVICEBUS_TEST_CONNECTION")
    queue_name = os.environ.get("SERVICEBUS_TEST_QUEUE")
    if not connection or not queue_name:
        pytest.skip(
            "Service Bus contract not run: set SERVICEBUS_TEST_CONNECTION to a namespace connection string and "
            "SERVICEBUS_TEST_QUEUE to a test queue with duplicate detection enabled"
        )
    from azure.servicebus.management import ServiceBusAdministrationClient

    from shared.adapters.azure.servicebus import ServiceBusStepQueue

    with ServiceBusAdministrationClient.from_connection_string(connection) as admin:
        if not admin.get_queue(queue_name).requires_duplicate_detection:
            pytest.skip(f"Service Bus queue {queue_name!r} has duplicate detection off; the contract needs it on")
    queue = ServiceBusStepQueue.from_connection_string(connection, queue_name)
    under_test = QueueUnderTest(
        queue, receive_wait=10.0, absent_wait=2.0, schedule_delay=8.0, clock_tolerance=2.0, counts_lag=15.0
    )
    under_test.drain()
    yield under_test
    under_test.drain()
    queue.close()


@pytest.fixture(params=["embedded", "servicebus"])
def under_test(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueUnderTest]:
    if request.param == "embedded":
        yield from _embedded(tmp_path)
    else:
        yield from _servicebus()


def _step_id() -> str:
    """A message id shaped like the engine's "{job_id}:{step}", unique per run (brokers remember ids)."""
    return f"contract-{uuid.uuid4().hex}:1"


def _plus(base: QueueCounts, *, active: int = 0, scheduled: int = 0, dead_lettered: int = 0) -> QueueCounts:
    return replace(
        base,
        active=base.active + active,
        scheduled=base.scheduled + scheduled,
        dead_lettered=base.dead_lettered + dead_lettered,
    )


def test_is_a_step_queue_and_answers_ping(under_test: QueueUnderTest) -> None:
    assert isinstance(under_test.queue, StepQueue)
    under_test.queue.ping()


def test_a_sent_message_is_delivered_with_its_body_and_id_and_completed_once(under_test: QueueUnderTest) -> None:
    queue, base, message_id = under_test.queue, under_test.queue.counts(), _step_id()
    queue.send(b'{"job_id": "j1", "step": 1}', message_id=message_id)
    assert under_test.counts_become(_plus(base, active=1)) == _plus(base, active=1)

    [message] = queue.receive(max_count=1, wait_seconds=under_test.receive_wait)
    assert message.message_id == message_id
    assert message.body == b'{"job_id": "j1", "step": 1}'
    assert message.enqueued_at is not None
    queue.complete(message)

    assert queue.receive(wait_seconds=under_test.absent_wait) == []
    assert under_test.counts_become(base) == base


def test_a_duplicate_message_id_is_dropped_silently(under_test: QueueUnderTest) -> None:
    queue, base, message_id = under_test.queue, under_test.queue.counts(), _step_id()
    queue.send(b"first", message_id=message_id)
    queue.send(b"second", message_id=message_id)  # a double send of one step

    assert under_test.counts_become(_plus(base, active=1)) == _plus(base, active=1)
    delivered = [m.body for m in under_test.receive_all() if m.message_id == message_id]
    assert delivered == [b"first"]


def test_a_scheduled_message_is_counted_as_scheduled_and_not_delivered_early(under_test: QueueUnderTest) -> None:
    queue, base, message_id = under_test.queue, under_test.queue.counts(), _step_id()
    due = utcnow() + timedelta(seconds=under_test.schedule_delay)
    queue.send(b"retry later", message_id=message_id, scheduled_at=due)

    assert under_test.counts_become(_plus(base, scheduled=1)) == _plus(base, scheduled=1)
    assert queue.receive(wait_seconds=under_test.absent_wait) == []

    [message] = queue.receive(wait_seconds=under_test.schedule_delay + under_test.receive_wait)
    assert utcnow() >= due - timedelta(seconds=under_test.clock_tolerance)
    assert message.message_id == message_id
    assert message.scheduled_at is not None
    assert abs((message.scheduled_at - due).total_seconds()) < 1.0
    queue.complete(message)
    assert under_test.counts_become(base) == base


def test_a_dead_lettered_message_is_peeked_then_received_and_completed(under_test: QueueUnderTest) -> None:
    queue, base, message_id = under_test.queue, under_test.queue.counts(), _step_id()
    queue.send(b"poison", message_id=message_id)
    [message] = queue.receive(wait_seconds=under_test.receive_wait)
    queue.dead_letter(message, "step_failed", "the tool raised twice")
    assert under_test.counts_become(_plus(base, dead_lettered=1)) == _plus(base, dead_lettered=1)

    # Peeking is repeatable and settles nothing.
    for _ in range(2):
        [peeked] = [m for m in queue.peek_dead_letters() if m.message_id == message_id]
        assert peeked.body == b"poison"
        assert peeked.dead_letter_reason == "step_failed"
        assert peeked.dead_letter_description == "the tool raised twice"
        assert peeked.enqueued_at is not None

    [locked] = [m for m in queue.receive_dead_letters(lock_seconds=30) if m.message_id == message_id]
    assert locked.dead_letter_reason == "step_failed"
    assert locked.body == b"poison"
    # While locked, another sweep does not get it.
    assert not [m for m in queue.receive_dead_letters(lock_seconds=30) if m.message_id == message_id]

    queue.complete_dead_letter(locked)
    assert under_test.counts_become(base) == base
    assert not [m for m in queue.peek_dead_letters() if m.message_id == message_id]


def test_a_dead_lettered_step_is_resent_only_under_a_new_message_id(under_test: QueueUnderTest) -> None:
    queue, base, message_id = under_test.queue, under_test.queue.counts(), _step_id()
    queue.send(b"step 1", message_id=message_id)
    [message] = queue.receive(wait_seconds=under_test.receive_wait)
    queue.dead_letter(message, "MaxDeliveryCountExceeded", "gave up")

    queue.send(b"step 1", message_id=message_id)  # inside the window: dropped as a duplicate
    queue.send(b"step 1", message_id=f"{message_id}:resubmit-1")
    expected = _plus(base, active=1, dead_lettered=1)
    assert under_test.counts_become(expected) == expected
    assert [m.message_id for m in under_test.receive_all()] == [f"{message_id}:resubmit-1"]

    for dead in queue.receive_dead_letters(lock_seconds=30):
        queue.complete_dead_letter(dead)
    assert under_test.counts_become(base) == base


def test_a_released_dead_letter_is_seen_by_the_next_receive_at_once(under_test: QueueUnderTest) -> None:
    queue, base, message_id = under_test.queue, under_test.queue.counts(), _step_id()
    queue.send(b"step 1", message_id=message_id)
    [message] = queue.receive(wait_seconds=under_test.receive_wait)
    queue.dead_letter(message, "step_failed", "for the test")
    assert under_test.counts_become(_plus(base, dead_lettered=1)) == _plus(base, dead_lettered=1)
    [locked] = [m for m in queue.receive_dead_letters(lock_seconds=60) if m.message_id == message_id]
    queue.abandon_dead_letter(locked)  # a sweep that could not handle it leaves it for the next one
    [again] = [m for m in queue.receive_dead_letters(lock_seconds=60) if m.message_id == message_id]
    assert again.dead_letter_reason == "step_failed"
    queue.complete_dead_letter(again)
    assert under_test.counts_become(base) == base


def test_peek_live_shows_waiting_and_locked_messages_without_settling_them(under_test: QueueUnderTest) -> None:
    queue, base = under_test.queue, under_test.queue.counts()
    first, second = _step_id(), _step_id()
    queue.send(b"a", message_id=first)
    queue.send(b"b", message_id=second)
    expected = _plus(base, active=2)
    assert under_test.counts_become(expected) == expected
    for _ in range(2):  # repeatable: a peek locks nothing
        assert {first, second} <= {m.message_id for m in queue.peek_live()}
    under_test.receive_all()
    assert not {first, second} & {m.message_id for m in queue.peek_live()}


# --- Service Bus adapter wiring that needs no namespace ------------------------------------------


def _closed_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_continuation_keeps_duplicate_detection_scheduling_and_delivery_count(under_test: QueueUnderTest) -> None:
    # On Service Bus without a continuation queue configured (as here) a continuation lands in the
    # same queue; with one, it lands in that queue, which has the same contract (see the Bicep).
    queue, base, message_id = under_test.queue, under_test.queue.counts(), _step_id()
    queue.send(b"now", message_id=message_id, continuation=True)
    queue.send(b"again", message_id=message_id, continuation=True)  # same id: dropped
    later = utcnow() + timedelta(seconds=under_test.schedule_delay)
    queue.send(b"later", message_id=_step_id(), scheduled_at=later, continuation=True)
    assert under_test.counts_become(_plus(base, active=1, scheduled=1)) == _plus(base, active=1, scheduled=1)

    [first] = queue.receive(max_count=10, wait_seconds=under_test.receive_wait)
    assert (first.body, first.delivery_count) == (b"now", 1)
    queue.abandon(first)
    [again] = queue.receive(max_count=10, wait_seconds=under_test.receive_wait)
    assert (again.body, again.delivery_count) == (b"now", 2)
    queue.complete(again)

    time.sleep(max(0.0, (later - utcnow()).total_seconds()) + under_test.clock_tolerance)
    [due] = queue.receive(max_count=10, wait_seconds=under_test.receive_wait)
    assert due.body == b"later"
    queue.complete(due)


def test_embedded_receive_serves_continuations_before_first_steps(tmp_path: Path) -> None:
    with LocalQueue(tmp_path / "queue.db", lock_seconds=30) as queue:
        for n in range(3):
            queue.send(f"first-{n}".encode(), message_id=f"new-{n}:1")
        queue.send(b"cont-0", message_id="old-0:2", continuation=True)
        queue.send(b"cont-1", message_id="old-1:5", continuation=True)
        queue.send(b"cont-late", message_id="old-2:3", continuation=True, scheduled_at=utcnow() + timedelta(hours=1))

        one = queue.receive(max_count=1)
        assert [m.body for m in one] == [b"cont-0"], "a continuation, oldest first, before older first steps"
        queue.abandon(one[0])  # back in line: still a continuation, still ahead of every first step
        batch = queue.receive(max_count=3)
        assert [m.body for m in batch] == [b"cont-0", b"cont-1", b"first-0"]
        assert batch[0].delivery_count == 2
        rest = queue.receive(max_count=10)
        assert [m.body for m in rest] == [b"first-1", b"first-2"], "a scheduled continuation waits its time"
        for message in batch + rest:
            queue.complete(message)
        assert queue.counts() == QueueCounts(active=0, scheduled=1, dead_lettered=0)


def test_embedded_queue_file_from_before_priorities_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    with LocalQueue(path) as queue:
        queue.send(b"waiting", message_id="old:1")
    with sqlite3.connect(path) as conn:  # what a file from before priorities looks like
        conn.execute("DROP INDEX messages_ready_by_priority")
        conn.execute("ALTER TABLE messages DROP COLUMN priority")
    with LocalQueue(path) as queue:
        queue.send(b"next", message_id="old:2", continuation=True)
        assert [m.body for m in queue.receive(max_count=10)] == [b"next", b"waiting"]


def test_servicebus_reports_an_unreachable_namespace_as_dependency_unavailable() -> None:
    from azure.servicebus import ServiceBusClient
    from azure.servicebus.management import ServiceBusAdministrationClient

    from shared.adapters.azure.servicebus import ServiceBusStepQueue

    connection = f"Endpoint=sb://127.0.0.1:{_closed_loopback_port()}/;SharedAccessKeyName=test;SharedAccessKey=dGVzdA=="
    queue = ServiceBusStepQueue(
        ServiceBusClient.from_connection_string(connection, retry_total=0),
        ServiceBusAdministrationClient.from_connection_string(connection, retry_total=0),
        "agent-jobs",
    )
    try:
        for operation in (
            queue.ping,
            queue.counts,
            lambda: queue.send(b"step", message_id="job-1:1"),
            queue.peek_dead_letters,
            queue.receive,
        ):
            with pytest.raises(DependencyUnavailable):
                operation()
    finally:
        queue.close()


def test_servicebus_is_built_from_either_form_of_the_setting() -> None:
    from shared.adapters.azure.servicebus import ServiceBusStepQueue

    unconfigured = Settings(servicebus_connection=None, servicebus_namespace=None)
    with pytest.raises(ValueError, match="ServiceBusConnection"):
        ServiceBusStepQueue.from_settings(unconfigured)

    by_key = Settings(
        servicebus_connection="Endpoint=sb://example.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=dA==",
        agent_jobs_queue="jobs-a",
    )
    by_identity = Settings(
        servicebus_connection=None,
        servicebus_namespace="example.servicebus.windows.net",
        agent_jobs_queue="jobs-b",
    )
    for settings in (by_key, by_identity):
        queue = ServiceBusStepQueue.from_settings(settings)  # builds clients; connects on first use
        assert isinstance(queue, StepQueue)
        assert queue.queue_name == settings.agent_jobs_queue
        # Continuations go to their own queue (its own trigger), so first steps never hold them back.
        assert queue.continuations is not None
        assert queue.continuations.queue_name == settings.agent_continuations_queue
        queue.close()
