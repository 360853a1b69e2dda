"""The embedded queue's consumer side: what the Functions host and Service Bus do in Azure.

Locks are short here (a few hundred ms) to keep the suite fast; waits that prove "nothing is
delivered" are short for the same reason. Child processes are real interpreters, so the
cross-process cases (kill -9, concurrent claims, cross-process wake-up) exercise SQLite itself.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from shared.adapters.local.queue import MAX_DELIVERY_COUNT_EXCEEDED, LocalQueue, MessageLockLost
from shared.contracts import utcnow
from shared.ports import QueueCounts, QueueMessage

REPO_ROOT = Path(__file__).resolve().parents[2]

QueueFactory = Callable[..., LocalQueue]


@pytest.fixture
def queue_path(tmp_path: Path) -> Path:
    return tmp_path / "queue.db"


@pytest.fixture
def open_queue(queue_path: Path) -> Iterator[QueueFactory]:
    """Open LocalQueues on the test's file; all are closed at the end."""
    opened: list[LocalQueue] = []

    def factory(**options: object) -> LocalQueue:
        queue = LocalQueue(queue_path, **options)  # type: ignore[arg-type]
        opened.append(queue)
        return queue

    yield factory
    for queue in opened:
        queue.close()


def _only(messages: list[QueueMessage]) -> QueueMessage:
    assert len(messages) == 1, messages
    return messages[0]


def _child(script: str, *args: str) -> subprocess.Popen[str]:
    """A separate interpreter running script with the repo importable."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


# --- peek-lock, delivery count, settling ------------------------------------------------------


def test_a_received_message_is_locked_until_its_lock_expires_then_redelivered(open_queue: QueueFactory) -> None:
    queue = open_queue(lock_seconds=0.3)
    queue.send(b"step", message_id="job-1:1")

    first = _only(queue.receive())
    assert (first.message_id, first.delivery_count) == ("job-1:1", 1)
    assert first.lock_token
    assert queue.receive() == []  # locked
    assert queue.counts() == QueueCounts(active=1, scheduled=0, dead_lettered=0)  # locked is still active

    started = time.monotonic()
    second = _only(queue.receive(wait_seconds=2.0))
    waited = time.monotonic() - started
    assert (second.sequence_number, second.delivery_count) == (first.sequence_number, 2)
    assert second.lock_token != first.lock_token
    assert 0.2 < waited < 0.5  # woken by the lock expiry, not by the end of the wait


def test_complete_removes_the_message(open_queue: QueueFactory) -> None:
    queue = open_queue(lock_seconds=30)
    queue.send(b"step", message_id="job-1:1")
    queue.complete(_only(queue.receive()))
    assert queue.counts() == QueueCounts(0, 0, 0)
    assert queue.receive(wait_seconds=0.05) == []


def test_messages_are_received_in_sequence_order(open_queue: QueueFactory) -> None:
    queue = open_queue(lock_seconds=30)
    for step in range(1, 6):
        queue.send(f"step {step}".encode(), message_id=f"job-1:{step}")
    received = queue.receive(max_count=10)
    assert [m.body for m in received] == [f"step {n}".encode() for n in range(1, 6)]
    assert [m.sequence_number for m in received] == sorted(m.sequence_number for m in received)


def test_abandon_makes_the_message_receivable_at_once(open_queue: QueueFactory) -> None:
    queue = open_queue(lock_seconds=30)
    queue.send(b"step", message_id="job-1:1")
    queue.abandon(_only(queue.receive()))
    again = _only(queue.receive())
    assert (again.message_id, again.delivery_count) == ("job-1:1", 2)


def test_abandoning_the_last_allowed_delivery_dead_letters_the_message(open_queue: QueueFactory) -> None:
    queue = open_queue(lock_seconds=30, max_delivery_count=3)
    queue.send(b"poison", message_id="job-1:4")
    for attempt in range(1, 4):
        message = _only(queue.receive())
        assert message.delivery_count == attempt
        queue.abandon(message)

    assert queue.receive(wait_seconds=0.05) == []
    assert queue.counts() == QueueCounts(active=0, scheduled=0, dead_lettered=1)
    dead = _only(queue.peek_dead_letters())
    assert (dead.message_id, dead.body, dead.delivery_count) == ("job-1:4", b"poison", 3)
    assert dead.dead_letter_reason == MAX_DELIVERY_COUNT_EXCEEDED == "MaxDeliveryCountExceeded"
    assert dead.dead_letter_description == "Message could not be consumed after 3 delivery attempts."
    assert dead.enqueued_at is not None


def test_an_expired_lock_on_the_last_allowed_delivery_dead_letters_instead_of_redelivering(
    open_queue: QueueFactory,
) -> None:
    queue = open_queue(lock_seconds=0.1, max_delivery_count=2)
    queue.send(b"slow step", message_id="job-1:2")
    assert _only(queue.receive()).delivery_count == 1
    assert _only(queue.receive(wait_seconds=1.0)).delivery_count == 2  # after the first lock expired

    assert queue.receive(wait_seconds=0.3) == []  # the third delivery never happens
    dead = _only(queue.peek_dead_letters())
    assert (dead.message_id, dead.delivery_count) == ("job-1:2", 2)
    assert dead.dead_letter_reason == MAX_DELIVERY_COUNT_EXCEEDED


def test_settling_after_another_consumer_relocked_the_message_raises_lock_lost(open_queue: QueueFactory) -> None:
    queue = open_queue(lock_seconds=0.1)
    queue.send(b"step", message_id="job-1:1")
    stale = _only(queue.receive())
    current = _only(queue.receive(wait_seconds=1.0))  # the lock expired; another delivery took it

    for settle in (queue.complete, queue.abandon, queue.renew_lock):
        with pytest.raises(MessageLockLost):
            settle(stale)
    with pytest.raises(MessageLockLost):
        queue.dead_letter(stale, "step_failed")

    queue.complete(current)
    assert queue.counts() == QueueCounts(0, 0, 0)


def test_settling_after_the_lock_expired_raises_lock_lost_and_the_message_stays(open_queue: QueueFactory) -> None:
    queue = open_queue(lock_seconds=0.1)
    queue.send(b"step", message_id="job-1:1")
    message = _only(queue.receive())
    time.sleep(0.15)
    with pytest.raises(MessageLockLost):
        queue.complete(message)
    assert _only(queue.receive()).delivery_count == 2


def test_renew_lock_keeps_the_message_locked(open_queue: QueueFactory) -> None:
    # Margins of 0.4 s either side: a loaded CI machine may pause this thread for a few hundred ms.
    queue = open_queue(lock_seconds=1.0)
    queue.send(b"long step", message_id="job-1:1")
    message = _only(queue.receive())
    time.sleep(0.6)
    locked_until = queue.renew_lock(message)
    assert locked_until > utcnow() + timedelta(seconds=0.8)
    time.sleep(0.6)  # past the first lock, inside the renewed one
    assert queue.receive() == []
    queue.complete(message)


def test_dead_letter_keeps_the_message_and_its_reason(open_queue: QueueFactory) -> None:
    queue = open_queue(lock_seconds=30)
    queue.send(b'{"job_id": "j", "step": 3}', message_id="j:3")
    message = _only(queue.receive())
    queue.dead_letter(message, "policy_violation", "tool not allowed")

    assert queue.receive() == []
    dead = _only(queue.peek_dead_letters())
    assert dead.message_id == "j:3"
    assert dead.body == b'{"job_id": "j", "step": 3}'
    assert dead.delivery_count == 1
    assert dead.enqueued_at == message.enqueued_at
    assert (dead.dead_letter_reason, dead.dead_letter_description) == ("policy_violation", "tool not allowed")
    assert dead.lock_token is None


def test_dead_letter_locks_expire_and_purge_empties_the_sub_queue(open_queue: QueueFactory) -> None:
    queue = open_queue(lock_seconds=30)
    for step in (1, 2):
        queue.send(b"step", message_id=f"j:{step}")
    for message in queue.receive(max_count=2):
        queue.dead_letter(message, "step_failed")

    locked = queue.receive_dead_letters(lock_seconds=0.2)
    assert [m.message_id for m in locked] == ["j:1", "j:2"]
    assert queue.receive_dead_letters() == []
    time.sleep(0.25)
    relocked = queue.receive_dead_letters(max_count=1, lock_seconds=30)
    assert [m.message_id for m in relocked] == ["j:1"]
    assert relocked[0].delivery_count == 1  # a sweep's receive does not count as a delivery
    with pytest.raises(MessageLockLost):
        queue.complete_dead_letter(locked[0])

    assert queue.purge_dead_letters() == 2
    assert queue.counts() == QueueCounts(0, 0, 0)


def test_duplicate_detection_forgets_ids_after_its_window(open_queue: QueueFactory) -> None:
    queue = open_queue(lock_seconds=30, duplicate_window_seconds=0.2)
    queue.send(b"a", message_id="j:1")
    queue.send(b"b", message_id="j:1")
    assert queue.counts().active == 1
    time.sleep(0.25)
    queue.send(b"c", message_id="j:1")
    assert [m.body for m in queue.receive(max_count=5)] == [b"a", b"c"]


# --- waking up --------------------------------------------------------------------------------


def test_a_send_wakes_a_receiver_blocked_in_another_thread_at_once(
    open_queue: QueueFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    # The wake-up is under test, not the disk: without an fsync per send, its latency is the wake-up's.
    consumer_side = open_queue(lock_seconds=30, synchronous="NORMAL")
    producer_side = open_queue(lock_seconds=30, synchronous="NORMAL")
    rounds = 200
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    waiting = threading.Event()

    def consume() -> None:
        for _ in range(rounds):
            waiting.set()
            message = _only(consumer_side.receive(wait_seconds=5.0))
            latencies.append(time.perf_counter() - sent_at[message.message_id])
            consumer_side.complete(message)

    consumer = threading.Thread(target=consume)
    consumer.start()
    for step in range(rounds):
        assert waiting.wait(5.0)
        waiting.clear()
        time.sleep(0.002)  # let the consumer get into its wait
        sent_at[f"job-1:{step}"] = time.perf_counter()
        producer_side.send(b"next step", message_id=f"job-1:{step}")
    consumer.join(10.0)

    assert len(latencies) == rounds
    p50, p99 = statistics.median(latencies), sorted(latencies)[int(rounds * 0.99) - 1]
    with capsys.disabled():
        print(f"\nLocalQueue send->receive wake-up across threads: p50 {p50 * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms")
    assert latencies[0] < 0.05
    assert p50 < 0.005


def test_abandon_wakes_a_blocked_receiver(open_queue: QueueFactory) -> None:
    queue = open_queue(lock_seconds=30)
    queue.send(b"step", message_id="job-1:1")
    held = _only(queue.receive())
    woke: list[float] = []

    def wait_for_it() -> None:
        _only(queue.receive(wait_seconds=5.0))
        woke.append(time.perf_counter())

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    time.sleep(0.05)
    abandoned = time.perf_counter()
    queue.abandon(held)
    waiter.join(5.0)
    assert woke and woke[0] - abandoned < 0.05


def test_a_scheduled_message_is_not_delivered_early_and_wakes_a_waiter_when_due(open_queue: QueueFactory) -> None:
    queue = open_queue(lock_seconds=30)
    received: list[tuple[float, QueueMessage]] = []

    def wait_for_it() -> None:
        message = _only(queue.receive(wait_seconds=5.0))
        received.append((time.time(), message))

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    time.sleep(0.05)  # blocked before the send: the send must shorten its wait
    due = utcnow() + timedelta(seconds=0.3)
    queue.send(b"retry", message_id="job-1:2", scheduled_at=due)
    assert queue.counts() == QueueCounts(active=0, scheduled=1, dead_lettered=0)
    waiter.join(5.0)

    [(at, message)] = received
    assert due.timestamp() <= at < due.timestamp() + 0.05
    assert message.scheduled_at == due
    assert message.enqueued_at == due


def test_a_scheduled_message_in_the_past_is_delivered_now(open_queue: QueueFactory) -> None:
    queue = open_queue(lock_seconds=30)
    queue.send(b"step", message_id="job-1:1", scheduled_at=utcnow() - timedelta(seconds=5))
    assert queue.counts() == QueueCounts(active=1, scheduled=0, dead_lettered=0)
    assert _only(queue.receive()).message_id == "job-1:1"


def test_close_releases_a_blocked_receiver(open_queue: QueueFactory) -> None:
    queue = open_queue(lock_seconds=30)
    results: list[list[QueueMessage]] = []
    waiter = threading.Thread(target=lambda: results.append(queue.receive(wait_seconds=5.0)))
    waiter.start()
    time.sleep(0.05)
    started = time.monotonic()
    queue.close()
    waiter.join(5.0)
    assert results == [[]]
    assert time.monotonic() - started < 0.1


def test_a_send_from_another_process_wakes_a_blocked_receiver(open_queue: QueueFactory, queue_path: Path) -> None:
    queue = open_queue(lock_seconds=30)
    producer = _child(
        """
        import sys, time
        from pathlib import Path
        from shared.adapters.local.queue import LocalQueue
        queue = LocalQueue(Path(sys.argv[1]))
        time.sleep(0.3)
        queue.send(b"from another process", message_id="job-9:1")
        print(time.time(), flush=True)
        """,
        str(queue_path),
    )
    message = _only(queue.receive(wait_seconds=10.0))
    received_at = time.time()
    out, err = producer.communicate(timeout=10)
    assert producer.returncode == 0, err
    assert message.body == b"from another process"
    assert received_at - float(out) < 0.5  # the cross-process poll runs every 200 ms


# --- durability -------------------------------------------------------------------------------


def test_messages_and_message_ids_survive_reopening(queue_path: Path) -> None:
    with LocalQueue(queue_path, lock_seconds=30) as queue:
        queue.send(b"step 1", message_id="job-1:1")
        queue.send(b"step 2", message_id="job-1:2", scheduled_at=utcnow() + timedelta(seconds=0.2))

    with LocalQueue(queue_path, lock_seconds=30) as reopened:
        assert reopened.counts() == QueueCounts(active=1, scheduled=1, dead_lettered=0)
        reopened.send(b"step 1 again", message_id="job-1:1")  # still a duplicate
        assert [m.body for m in reopened.receive(max_count=5)] == [b"step 1"]
        assert [m.body for m in reopened.receive(max_count=5, wait_seconds=2.0)] == [b"step 2"]


def test_a_lock_held_by_a_killed_process_expires_and_the_message_is_redelivered(
    open_queue: QueueFactory, queue_path: Path
) -> None:
    consumer = _child(
        """
        import json, sys, time
        from pathlib import Path
        from shared.adapters.local.queue import LocalQueue
        queue = LocalQueue(Path(sys.argv[1]), lock_seconds=0.5)
        queue.send(b"step 7", message_id="job-2:7")
        [message] = queue.receive()
        print(json.dumps({"sequence": message.sequence_number, "delivery_count": message.delivery_count}), flush=True)
        time.sleep(60)  # holds the lock until killed
        """,
        str(queue_path),
    )
    assert consumer.stdout is not None
    line = consumer.stdout.readline()
    assert line, consumer.stderr.read() if consumer.stderr else ""
    held = json.loads(line)
    consumer.send_signal(signal.SIGKILL)
    consumer.wait(5)
    assert consumer.returncode == -signal.SIGKILL

    queue = open_queue(lock_seconds=30)
    redelivered = _only(queue.receive(wait_seconds=3.0))
    assert (redelivered.message_id, redelivered.body) == ("job-2:7", b"step 7")
    assert held["delivery_count"] == 1
    assert (redelivered.sequence_number, redelivered.delivery_count) == (held["sequence"], 2)


# --- concurrency ------------------------------------------------------------------------------


def test_concurrent_receivers_in_threads_never_get_the_same_message(open_queue: QueueFactory) -> None:
    producer = open_queue(lock_seconds=30)
    for n in range(300):
        producer.send(b"step", message_id=f"job-{n}:1")
    # Two objects (two connections) and two threads on each: both kinds of sharing at once.
    consumers = [open_queue(lock_seconds=30), open_queue(lock_seconds=30)]
    taken: list[list[int]] = [[] for _ in range(4)]

    def drain(queue: LocalQueue, mine: list[int]) -> None:
        while batch := queue.receive(max_count=3, wait_seconds=0.1):
            for message in batch:
                mine.append(message.sequence_number)
                queue.complete(message)

    threads = [threading.Thread(target=drain, args=(consumers[i % 2], taken[i])) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)

    everything = [seq for mine in taken for seq in mine]
    assert len(everything) == len(set(everything)) == 300
    assert producer.counts() == QueueCounts(0, 0, 0)


def test_concurrent_receivers_in_processes_never_get_the_same_message(
    open_queue: QueueFactory, queue_path: Path
) -> None:
    producer = open_queue(lock_seconds=30)
    for n in range(200):
        producer.send(b"step", message_id=f"job-{n}:1")
    drain = """
        import json, sys
        from pathlib import Path
        from shared.adapters.local.queue import LocalQueue
        queue = LocalQueue(Path(sys.argv[1]), lock_seconds=30)
        taken = []
        while batch := queue.receive(max_count=2, wait_seconds=0.3):
            for message in batch:
                taken.append(message.sequence_number)
                queue.complete(message)
        print(json.dumps(taken))
        """
    consumers = [_child(drain, str(queue_path)) for _ in range(2)]
    results = [consumer.communicate(timeout=30) for consumer in consumers]
    assert [c.returncode for c in consumers] == [0, 0], [err for _, err in results]

    taken = [json.loads(out) for out, _ in results]
    everything = taken[0] + taken[1]
    assert len(everything) == len(set(everything)) == 200
    assert producer.counts() == QueueCounts(0, 0, 0)


def test_named_queues_in_one_file_are_separate(queue_path: Path) -> None:
    with LocalQueue(queue_path, "agent-jobs") as jobs, LocalQueue(queue_path, "other-jobs") as other:
        jobs.send(b"a", message_id="j:1")
        other.send(b"b", message_id="j:1")  # duplicate detection is per queue
        assert other.receive(max_count=5)[0].body == b"b"
        assert other.receive() == []
        assert jobs.counts() == QueueCounts(active=1, scheduled=0, dead_lettered=0)
        assert _only(jobs.receive()).body == b"a"


# --- sends held while a message is handled, committed with its completion (the output binding) ----


def test_held_sends_commit_with_the_completion_and_not_before(open_queue: QueueFactory) -> None:
    queue = open_queue()
    queue.send(b"step 1", message_id="job-1:1")
    message = _only(queue.receive())
    with queue.collecting_sends() as sends:
        queue.send(b"step 2", message_id="job-1:2", continuation=True)
        queue.send(b"retry", message_id="job-1:1:r1", scheduled_at=utcnow() + timedelta(hours=1))
    assert [s.message_id for s in sends] == ["job-1:2", "job-1:1:r1"]
    assert [m.message_id for m in queue.peek_live()] == ["job-1:1"]  # held, not sent

    queue.complete(message, sends=sends)
    assert [m.message_id for m in queue.peek_live()] == ["job-1:2", "job-1:1:r1"]
    assert queue.counts() == QueueCounts(active=1, scheduled=1, dead_lettered=0)
    with queue.collecting_sends() as sends:
        queue.send(b"step 2 again", message_id="job-1:2")  # a redelivery's follow-up: a duplicate
    queue.send_all(sends)
    assert queue.counts().active == 1


def test_held_sends_are_committed_even_when_the_completion_lost_its_lock(open_queue: QueueFactory) -> None:
    queue = open_queue(lock_seconds=0.1)
    queue.send(b"step 1", message_id="job-1:1")
    message = _only(queue.receive())
    with queue.collecting_sends() as sends:
        queue.send(b"step 2", message_id="job-1:2")
    time.sleep(0.15)
    with pytest.raises(MessageLockLost):
        queue.complete(message, sends=sends)
    assert sorted(m.message_id for m in queue.peek_live()) == ["job-1:1", "job-1:2"]  # nothing lost


def test_collecting_sends_holds_only_this_threads_sends(open_queue: QueueFactory, queue_path: Path) -> None:
    queue = open_queue()
    other = LocalQueue(queue_path)  # another object on the same file and queue collects alike
    try:
        with queue.collecting_sends() as sends:
            other.send(b"held", message_id="held")
            worker = threading.Thread(target=lambda: queue.send(b"sent", message_id="sent"))
            worker.start()
            worker.join()
        assert [s.message_id for s in sends] == ["held"]
        assert [m.message_id for m in queue.peek_live()] == ["sent"]
    finally:
        other.close()


# --- a worker's completion claims its next message ---------------------------------------------------


def test_complete_and_receive_settles_sends_and_claims_the_next_message_in_one_go(open_queue: QueueFactory) -> None:
    queue = open_queue(lock_seconds=30)
    queue.send(b"new job", message_id="job-2:1")
    queue.send(b"step 1", message_id="job-1:1", continuation=True)
    message = _only(queue.receive())
    assert message.message_id == "job-1:1"
    with queue.collecting_sends() as sends:
        queue.send(b"step 2", message_id="job-1:2", continuation=True)
    following = queue.complete_and_receive(message, sends=sends)
    # What receive(1) would have given: the continuation first, locked, on its first delivery.
    assert following is not None and (following.message_id, following.delivery_count) == ("job-1:2", 1)
    assert following.lock_token
    assert [m.message_id for m in queue.peek_live()] == ["job-2:1", "job-1:2"]  # step 1 completed
    assert _only(queue.receive()).message_id == "job-2:1"  # step 2 is locked: only the new job is left
    queue.complete(following)
    assert [m.message_id for m in queue.peek_live()] == ["job-2:1"]


def test_complete_and_receive_on_an_empty_queue_claims_nothing(open_queue: QueueFactory) -> None:
    queue = open_queue(lock_seconds=30)
    queue.send(b"step 1", message_id="job-1:1")
    assert queue.complete_and_receive(_only(queue.receive())) is None
    assert queue.counts() == QueueCounts(0, 0, 0)


def test_complete_and_receive_after_a_lost_lock_claims_nothing(open_queue: QueueFactory) -> None:
    queue = open_queue(lock_seconds=0.1)
    queue.send(b"step 1", message_id="job-1:1")
    queue.send(b"other", message_id="job-2:1")
    message = _only(queue.receive())
    time.sleep(0.15)
    with pytest.raises(MessageLockLost):
        queue.complete_and_receive(message)
    assert sorted(m.message_id for m in queue.receive(2)) == ["job-1:1", "job-2:1"]  # neither was taken


# --- group commit of fsync'd sends ------------------------------------------------------------------


def test_concurrent_sends_share_transactions_and_each_is_sent_once(open_queue: QueueFactory) -> None:
    from tests.fixtures.concurrency import raised, run_together

    queue = open_queue()
    transactions = [0]
    transaction = queue._transaction

    def counted():  # type: ignore[no-untyped-def]
        transactions[0] += 1
        return transaction()

    queue._transaction = counted  # type: ignore[method-assign]

    def sender(i: int) -> None:
        for n in range(20):
            queue.send(f"{i}:{n}".encode(), message_id=f"job-{i}-{n}:1")
            queue.send(b"contested", message_id=f"shared-{n}:1")  # every thread sends it: kept once

    assert raised(run_together(8, sender)) == []
    live = queue.peek_live()
    assert sorted(m.message_id for m in live) == sorted(
        [f"job-{i}-{n}:1" for i in range(8) for n in range(20)] + [f"shared-{n}:1" for n in range(20)]
    )
    assert transactions[0] < 8 * 20 * 2  # fewer fsync'd commits than sends


def test_a_failed_group_commit_fails_every_sender_in_it_and_sends_nothing(
    open_queue: QueueFactory, queue_path: Path
) -> None:
    import sqlite3

    from shared.errors import DependencyUnavailable
    from tests.fixtures.concurrency import run_together

    queue = open_queue()
    blocker = sqlite3.connect(queue_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock past the busy timeout
    try:
        results = run_together(6, lambda i: queue.send(b"x", message_id=f"job-{i}:1"))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert all(isinstance(r, DependencyUnavailable) for r in results), results
    assert queue.peek_live() == []
    queue.send(b"x", message_id="job-0:1")  # nothing was recorded: the retry is not a duplicate
    assert [m.message_id for m in queue.peek_live()] == ["job-0:1"]
