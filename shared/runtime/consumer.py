"""Queue consumer: what the Functions host's Service Bus trigger does, for the embedded queue.

N workers (host.json maxConcurrentCalls) peek-lock a message each, invoke the function
with a real azure.functions ServiceBusMessage, complete on return and abandon on an
exception. Messages the function sends to its own queue meanwhile are held and committed in
the completion's transaction, like an output binding (LocalQueue.collecting_sends): one
transaction, and no fsync, per step instead of a fsync'd send plus a completion. That same
transaction peek-locks the worker's next message (LocalQueue.complete_and_receive), so a worker
goes from one step to the next without a receive of its own. Locks are renewed while a step
runs, up to maxAutoLockRenewalDuration.

A worker never dies: whatever a receive, a settle or a lock renewal raises (the queue or
storage down, a disk full), it logs, backs off and carries on, and an unsettled message is
simply delivered again when its lock expires. The pool reports its live workers to the
health service, so a pool below its configured size shows in /api/health.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from azure.functions.servicebus import ServiceBusMessage

from shared.adapters.local.queue import LocalQueue, MessageLockLost, PendingSend
from shared.ports import QueueMessage, RejectMessage
from shared.runtime.functions import QueueFunction
from shared.runtime.ingest_process import IngestProcess
from shared.services.health import WorkerPoolState
from shared.services.ingestion import is_ingestion_message

log = logging.getLogger("agent.runtime")

# After a failed receive or settle: the first retry is quick, repeated failures slow down to the cap,
# so an outage costs a few attempts per second per worker rather than a busy loop.
BACKOFF_FIRST_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 5.0


def to_functions_message(m: QueueMessage) -> ServiceBusMessage:
    return ServiceBusMessage(
        body=m.body,
        message_id=m.message_id,
        delivery_count=m.delivery_count,
        enqueued_time_utc=m.enqueued_at,
        scheduled_enqueue_time_utc=m.scheduled_at,
        sequence_number=m.sequence_number,
        lock_token=str(m.lock_token),
        content_type="application/json",
        application_properties=dict(m.properties),
        user_properties=dict(m.properties),
    )


class _Backoff:
    """Exponential backoff that resets on success."""

    def __init__(self) -> None:
        self.delay = 0.0

    def failed(self) -> float:
        self.delay = min(BACKOFF_MAX_SECONDS, max(BACKOFF_FIRST_SECONDS, self.delay * 2))
        return self.delay

    def succeeded(self) -> None:
        self.delay = 0.0


class QueueConsumer:
    def __init__(
        self,
        queue: LocalQueue,
        function: QueueFunction,
        *,
        concurrency: int,
        max_lock_renewal_seconds: float,
        ingest: IngestProcess | None = None,
    ) -> None:
        self.queue = queue
        self.function = function
        self.ingest = ingest  # where ingestion batches run (a child process), instead of function.run
        self.concurrency = max(1, concurrency)
        self.max_lock_renewal_seconds = max_lock_renewal_seconds
        self._stopping = threading.Event()
        self._workers: list[threading.Thread] = []
        self._renewer: threading.Thread | None = None
        self.busy = 0
        self._busy_lock = threading.Lock()
        self._in_flight: dict[int, tuple[QueueMessage, float]] = {}

    def start(self) -> None:
        for i in range(self.concurrency):
            t = threading.Thread(target=self._work, name=f"{self.function.name}-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        # One renewer for all in-flight messages: a thread per message would cost more than a short step.
        self._renewer = threading.Thread(target=self._renew_locks, name=f"{self.function.name}-renew", daemon=True)
        self._renewer.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking messages and let in-flight steps finish (unfinished ones are redelivered)."""
        self._stopping.set()
        for t in [*self._workers, *([self._renewer] if self._renewer else [])]:
            t.join(timeout)

    def pool_state(self) -> WorkerPoolState:
        """What the health service reports: configured workers, live workers, and the lock renewer."""
        return WorkerPoolState(
            configured=self.concurrency,
            alive=sum(t.is_alive() for t in self._workers),
            lock_renewer=self._renewer is not None and self._renewer.is_alive(),
        )

    def _work(self) -> None:
        backoff = _Backoff()
        following: QueueMessage | None = None  # claimed by the last completion
        while not self._stopping.is_set() or following is not None:
            try:
                m = following or next(iter(self.queue.receive(1, wait_seconds=0.5)), None)
                following = None
                settled = True
                if m is not None:
                    settled, following = self._invoke(m)
            except Exception:  # noqa: BLE001 - a worker must outlive any failure; the queue may be down
                log.exception("queue worker failed; backing off", extra={"event": "worker_error"})
                settled = False
            if settled:
                backoff.succeeded()
            else:
                self._stopping.wait(backoff.failed())

    def _invoke(self, m: QueueMessage) -> tuple[bool, QueueMessage | None]:
        """Run the function on m and settle it: whether the settle succeeded (else the lock expires),
        and the next message, when the completion claimed one (not once the pool is stopping)."""
        key = id(m)
        with self._busy_lock:
            self.busy += 1
            self._in_flight[key] = (m, time.monotonic())
        # The function's own sends to this queue are held and commit with the completion, in one
        # transaction (an output binding); on an exception they are sent first, as they were made.
        sends: list[PendingSend] = []
        try:
            with self.queue.collecting_sends() as sends:
                if self.ingest is not None and is_ingestion_message(m.body):
                    self.ingest.run(m.body, m.delivery_count or 1)
                else:
                    self.function.run(**{self.function.arg_name: to_functions_message(m)})
        except RejectMessage as rejected:
            self._forget(key)
            if not self._flush(sends):
                return False, None
            reason, description = rejected.reason, rejected.description
            log.warning(
                "message %s rejected (%s): %s; dead-lettered",
                m.message_id,
                reason,
                description,
                extra={"event": "message_rejected", "reason": reason},
            )
            return self._settle(lambda msg: self.queue.dead_letter(msg, reason, description), m), None
        except Exception as exc:  # noqa: BLE001 - the host abandons on any exception
            self._forget(key)
            log.warning(
                "function %s failed on message %s (delivery %s): %s: %s",
                self.function.name,
                m.message_id,
                m.delivery_count,
                type(exc).__name__,
                exc,
            )
            if not self._flush(sends):
                return False, None
            return self._settle(self.queue.abandon, m), None
        self._forget(key)
        if self._stopping.is_set():
            return self._settle(lambda msg: self.queue.complete(msg, sends=sends), m), None
        following: list[QueueMessage | None] = [None]

        def complete(msg: QueueMessage) -> None:
            following[0] = self.queue.complete_and_receive(msg, sends=sends)

        return self._settle(complete, m), following[0]

    def _flush(self, sends: list[PendingSend]) -> bool:
        """Send what a failed function sent before it failed; False if the queue is down (then the
        message stays locked until its lock expires and is redelivered, and its handler sends again)."""
        try:
            self.queue.send_all(sends)
        except Exception as exc:  # noqa: BLE001 - the redelivery sends again
            log.warning("could not send %s held messages (%s: %s)", len(sends), type(exc).__name__, exc)
            return False
        return True

    def _forget(self, key: int) -> None:
        with self._busy_lock:
            self._in_flight.pop(key, None)
            self.busy -= 1

    def _settle(self, action: Callable[[QueueMessage], object], m: QueueMessage) -> bool:
        try:
            action(m)
        except MessageLockLost:
            log.warning("lock on %s was lost before settling; it will be redelivered", m.message_id)
        except Exception as exc:  # noqa: BLE001 - unsettled is safe: the lock expires and the step is redelivered
            log.warning(
                "could not settle %s (%s: %s); it is redelivered when its lock expires",
                m.message_id,
                type(exc).__name__,
                exc,
                extra={"event": "settle_failed"},
            )
            return False
        return True

    def _renew_locks(self) -> None:
        """Renew the locks of running steps every half lock duration, up to maxAutoLockRenewalDuration."""
        interval = max(self.queue.lock_seconds / 2, 0.05)
        while not self._stopping.wait(interval):
            with self._busy_lock:
                running = list(self._in_flight.values())
            now = time.monotonic()
            for m, started in running:
                if now - started > self.max_lock_renewal_seconds:
                    continue
                try:
                    self.queue.renew_lock(m)
                except MessageLockLost:
                    pass  # settled meanwhile, or lost: the settle path reports it
                except Exception as exc:  # noqa: BLE001 - try again at the next interval; the lock may still hold
                    log.warning(
                        "could not renew the lock on %s (%s: %s)",
                        m.message_id,
                        type(exc).__name__,
                        exc,
                        extra={"event": "renew_failed"},
                    )
