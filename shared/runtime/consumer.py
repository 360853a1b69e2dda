"""Queue consumer: what the Functions host's Service Bus trigger does, for the embedded queue.

N workers (host.json maxConcurrentCalls) peek-lock a message each, invoke the function
with a real azure.functions ServiceBusMessage, complete on return and abandon on an
exception. Locks are renewed while a step runs, up to maxAutoLockRenewalDuration.
"""

from __future__ import annotations

import logging
import threading
import time

from azure.functions.servicebus import ServiceBusMessage

from shared.adapters.local.queue import LocalQueue, MessageLockLost
from shared.ports import QueueMessage
from shared.runtime.functions import QueueFunction

log = logging.getLogger("agent.runtime")


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


class QueueConsumer:
    def __init__(
        self, queue: LocalQueue, function: QueueFunction, *, concurrency: int, max_lock_renewal_seconds: float
    ) -> None:
        self.queue = queue
        self.function = function
        self.concurrency = max(1, concurrency)
        self.max_lock_renewal_seconds = max_lock_renewal_seconds
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.busy = 0
        self._busy_lock = threading.Lock()
        self._in_flight: dict[int, tuple[QueueMessage, float]] = {}

    def start(self) -> None:
        for i in range(self.concurrency):
            t = threading.Thread(target=self._work, name=f"{self.function.name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        # One renewer for all in-flight messages: a thread per message would cost more than a short step.
        renewer = threading.Thread(target=self._renew_locks, name=f"{self.function.name}-renew", daemon=True)
        renewer.start()
        self._threads.append(renewer)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking messages and let in-flight steps finish (unfinished ones are redelivered)."""
        self._stopping.set()
        for t in self._threads:
            t.join(timeout)

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                messages = self.queue.receive(1, wait_seconds=0.5)
            except Exception:  # noqa: BLE001 - keep the worker alive; the queue may be busy
                log.exception("receive failed")
                self._stopping.wait(0.5)
                continue
            for m in messages:
                self._invoke(m)

    def _invoke(self, m: QueueMessage) -> None:
        key = id(m)
        with self._busy_lock:
            self.busy += 1
            self._in_flight[key] = (m, time.monotonic())
        try:
            self.function.run(**{self.function.arg_name: to_functions_message(m)})
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
            self._settle(self.queue.abandon, m)
        else:
            self._forget(key)
            self._settle(self.queue.complete, m)

    def _forget(self, key: int) -> None:
        with self._busy_lock:
            self._in_flight.pop(key, None)
            self.busy -= 1

    def _settle(self, action, m: QueueMessage) -> None:  # type: ignore[no-untyped-def]
        try:
            action(m)
        except MessageLockLost:
            log.warning("lock on %s was lost before settling; it will be redelivered", m.message_id)

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
