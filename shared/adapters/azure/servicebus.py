"""The step queue on Azure Service Bus.

One ServiceBusClient per adapter, with its sender and receivers created on first use and kept:
opening an AMQP link costs a round trip or more, so a client per send would dominate the
step hop. SDK handlers are not thread-safe, so each one is used under its own lock.

Counts come from the management plane (the `countDetails` that `az servicebus queue show`
prints); they lag the data plane by a moment. Duplicate detection, the lock duration and
MaxDeliveryCount are properties of the queue itself (set by infra), not of this client.

Besides the StepQueue port, the adapter offers the consumer side with the same names as the
embedded queue (receive, complete, abandon, dead_letter, renew_lock): the Functions host does
this in Azure, but the contract suite and operators' tools need a receiver too.

Fairness: a continuation (a later step of a started job) is sent to a second queue,
AGENT_CONTINUATIONS_QUEUE, with its own trigger; first steps of new jobs wait in the main queue,
so under overload the host keeps finishing started jobs. counts() and the dead-letter methods
cover both queues, so the sweep and the runbook see one step queue.

delivery_count is what the Python SDK reports: the AMQP header count, which can read one
lower than the DeliveryCount the .NET SDK and the Functions host show for the same message.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import AzureError, ServiceRequestError, ServiceResponseError
from azure.identity import DefaultAzureCredential
from azure.servicebus import (
    AutoLockRenewer,
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
    ServiceBusReceiver,
    ServiceBusSender,
    ServiceBusSubQueue,
)
from azure.servicebus.exceptions import (
    OperationTimeoutError,
    ServiceBusCommunicationError,
    ServiceBusConnectionError,
    ServiceBusServerBusyError,
)
from azure.servicebus.management import ServiceBusAdministrationClient

from shared.errors import DependencyUnavailable
from shared.ports import QueueCounts, QueueMessage
from shared.settings import Settings

# Errors that mean "Service Bus could not be reached right now"; the rest (auth, missing
# entity, bad arguments) are configuration or code problems and surface as they are.
_UNREACHABLE = (
    ServiceBusConnectionError,
    ServiceBusCommunicationError,
    OperationTimeoutError,
    ServiceBusServerBusyError,
    ServiceRequestError,
    ServiceResponseError,
)

# receive_messages cannot return at once: it grants link credit and waits for the broker.
_MIN_RECEIVE_WAIT_SECONDS = 1.0


@contextmanager
def _unavailable_on_connection_errors(what: str) -> Iterator[None]:
    try:
        yield
    except _UNREACHABLE as exc:
        raise DependencyUnavailable(f"Service Bus {what} failed: {exc}") from exc


def _body(message: ServiceBusReceivedMessage) -> bytes:
    body: Any = message.body
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    return b"".join(body)  # a DATA body arrives as an iterable of sections


def _to_port(message: ServiceBusReceivedMessage, *, locked: bool) -> QueueMessage:
    properties = {
        (key.decode() if isinstance(key, bytes) else str(key)): value
        for key, value in (message.application_properties or {}).items()
    }
    return QueueMessage(
        message_id=str(message.message_id),
        body=_body(message),
        sequence_number=message.sequence_number or 0,
        delivery_count=message.delivery_count or 0,
        enqueued_at=message.enqueued_time_utc,
        scheduled_at=message.scheduled_enqueue_time_utc,
        dead_letter_reason=message.dead_letter_reason,
        dead_letter_description=message.dead_letter_error_description,
        properties=properties,
        # The SDK settles through the received message object, on the receiver that locked it.
        lock_token=message if locked else None,
    )


def _received(message: QueueMessage) -> ServiceBusReceivedMessage:
    if not isinstance(message.lock_token, ServiceBusReceivedMessage):
        raise ValueError(f"message {message.message_id!r} was not received with a lock by this adapter")
    return message.lock_token


class ServiceBusStepQueue:
    """StepQueue over one Service Bus queue, plus a peek-lock consumer."""

    def __init__(
        self,
        client: ServiceBusClient,
        admin: ServiceBusAdministrationClient,
        queue_name: str,
        *,
        dead_letter_wait_seconds: float = 5.0,
        continuation_queue_name: str | None = None,
    ) -> None:
        self.queue_name = queue_name
        self._owns_client = True
        # The second queue shares this client; it is a plain single-queue adapter of its own.
        self.continuations: ServiceBusStepQueue | None = None
        if continuation_queue_name:
            self.continuations = ServiceBusStepQueue(
                client, admin, continuation_queue_name, dead_letter_wait_seconds=dead_letter_wait_seconds
            )
            self.continuations._owns_client = False
        # Dead letters received from the continuation queue settle on its receiver, not ours.
        self._continuation_dead_letters: weakref.WeakSet[ServiceBusReceivedMessage] = weakref.WeakSet()
        self._client = client
        self._admin = admin
        self._dead_letter_wait_seconds = dead_letter_wait_seconds
        self._sender: ServiceBusSender | None = None
        self._receiver: ServiceBusReceiver | None = None
        self._dead_letter_receiver: ServiceBusReceiver | None = None
        self._renewer: AutoLockRenewer | None = None
        self._credential: DefaultAzureCredential | None = None  # closed with the adapter when it made one
        self._sender_lock = threading.Lock()
        self._receiver_lock = threading.Lock()
        self._dead_letter_lock = threading.Lock()

    @classmethod
    def from_connection_string(
        cls, connection_string: str, queue_name: str, continuation_queue_name: str | None = None
    ) -> ServiceBusStepQueue:
        return cls(
            ServiceBusClient.from_connection_string(connection_string),
            ServiceBusAdministrationClient.from_connection_string(connection_string),
            queue_name,
            continuation_queue_name=continuation_queue_name,
        )

    @classmethod
    def from_namespace(
        cls, fully_qualified_namespace: str, queue_name: str, continuation_queue_name: str | None = None
    ) -> ServiceBusStepQueue:
        """Identity-based: managed identity in Azure, the developer's az login elsewhere."""
        namespace = fully_qualified_namespace.removeprefix("sb://").rstrip("/")
        credential = DefaultAzureCredential()
        admin = ServiceBusAdministrationClient(namespace, credential)
        client = ServiceBusClient(namespace, credential)
        queue = cls(client, admin, queue_name, continuation_queue_name=continuation_queue_name)
        queue._credential = credential
        return queue

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceBusStepQueue:
        if settings.servicebus_connection:
            return cls.from_connection_string(
                settings.servicebus_connection, settings.agent_jobs_queue, settings.agent_continuations_queue
            )
        if settings.servicebus_namespace:
            return cls.from_namespace(
                settings.servicebus_namespace, settings.agent_jobs_queue, settings.agent_continuations_queue
            )
        raise ValueError(
            "Service Bus is not configured: set ServiceBusConnection (a connection string) or "
            "ServiceBusConnection__fullyQualifiedNamespace (identity-based) in local.settings.json or app settings"
        )

    # --- the StepQueue port ---------------------------------------------------------------------

    def send(
        self, body: bytes, *, message_id: str, scheduled_at: datetime | None = None, continuation: bool = False
    ) -> None:
        """Enqueue; the queue's duplicate detection drops a message_id seen within its window.

        A continuation goes to the continuation queue when there is one (its trigger runs it).
        """
        if continuation and self.continuations is not None:
            self.continuations.send(body, message_id=message_id, scheduled_at=scheduled_at)
            return
        message = ServiceBusMessage(body, message_id=message_id)
        if scheduled_at is not None:
            # Set on the message rather than schedule_messages(): one send path, one sender link.
            naive = scheduled_at.tzinfo is None
            message.scheduled_enqueue_time_utc = scheduled_at.replace(tzinfo=UTC) if naive else scheduled_at
        with self._sender_lock, _unavailable_on_connection_errors(f"send to {self.queue_name}"):
            if self._sender is None:
                self._sender = self._client.get_queue_sender(self.queue_name)
            self._sender.send_messages(message)

    def counts(self) -> QueueCounts:
        with _unavailable_on_connection_errors(f"reading the counts of {self.queue_name}"):
            runtime = self._admin.get_queue_runtime_properties(self.queue_name)
        counts = QueueCounts(
            active=runtime.active_message_count or 0,
            scheduled=runtime.scheduled_message_count or 0,
            dead_lettered=runtime.dead_letter_message_count or 0,
        )
        if self.continuations is None:
            return counts
        more = self.continuations.counts()
        return QueueCounts(
            active=counts.active + more.active,
            scheduled=counts.scheduled + more.scheduled,
            dead_lettered=counts.dead_lettered + more.dead_lettered,
        )

    def peek_dead_letters(self, max_count: int = 100) -> list[QueueMessage]:
        peeked: list[ServiceBusReceivedMessage] = []
        # Always from sequence 1: a receiver's peek otherwise resumes where its last peek stopped.
        next_sequence = 1
        with self._dead_letter_lock, _unavailable_on_connection_errors(f"peek at {self.queue_name}/$deadletterqueue"):
            receiver = self._dead_letters()
            while len(peeked) < max_count:
                batch = receiver.peek_messages(max_count - len(peeked), sequence_number=next_sequence)
                if not batch:
                    break
                peeked.extend(batch)
                next_sequence = (batch[-1].sequence_number or 0) + 1
        ours = [_to_port(message, locked=False) for message in peeked]
        if self.continuations is not None and len(ours) < max_count:
            ours += self.continuations.peek_dead_letters(max_count - len(ours))
        return ours

    def receive_dead_letters(self, max_count: int = 100, lock_seconds: float = 60.0) -> list[QueueMessage]:
        """Lock dead-lettered messages for settling.

        Service Bus fixes a lock at the queue's LockDuration; a longer lock_seconds is kept by
        renewing, so an unsettled message unlocks at most one LockDuration after lock_seconds.
        """
        received: list[ServiceBusReceivedMessage] = []
        failure = f"receive from {self.queue_name}/$deadletterqueue"
        with self._dead_letter_lock, _unavailable_on_connection_errors(failure):
            receiver = self._dead_letters()
            wait = self._dead_letter_wait_seconds
            # A receive returns at the first gap in arrivals, so keep asking until max_count or empty.
            while len(received) < max_count:
                batch = receiver.receive_messages(max_message_count=max_count - len(received), max_wait_time=wait)
                if not batch:
                    break
                received.extend(batch)
                wait = _MIN_RECEIVE_WAIT_SECONDS
            if self._renewer is None:
                self._renewer = AutoLockRenewer(max_workers=4)
            for message in received:
                self._renewer.register(receiver, message, max_lock_renewal_duration=lock_seconds)
        ours = [_to_port(message, locked=True) for message in received]
        if self.continuations is not None and len(ours) < max_count:
            theirs = self.continuations.receive_dead_letters(max_count - len(ours), lock_seconds)
            for theirs_one in theirs:
                self._continuation_dead_letters.add(_received(theirs_one))
            ours += theirs
        return ours

    def complete_dead_letter(self, message: QueueMessage) -> None:
        if self.continuations is not None and _received(message) in self._continuation_dead_letters:
            self.continuations.complete_dead_letter(message)
            return
        with self._dead_letter_lock, _unavailable_on_connection_errors("completing a dead-lettered message"):
            self._dead_letters().complete_message(_received(message))

    def abandon_dead_letter(self, message: QueueMessage) -> None:
        with self._dead_letter_lock, _unavailable_on_connection_errors("releasing a dead-lettered message"):
            # A settled message is no longer renewed by the AutoLockRenewer, so it is visible at once.
            self._dead_letters().abandon_message(_received(message))

    def peek_live(self, max_count: int = 1000) -> list[QueueMessage]:
        peeked: list[ServiceBusReceivedMessage] = []
        next_sequence = 1
        with self._receiver_lock, _unavailable_on_connection_errors(f"peek at {self.queue_name}"):
            receiver = self._client.get_queue_receiver(self.queue_name, receive_mode=ServiceBusReceiveMode.PEEK_LOCK)
            with receiver:
                while len(peeked) < max_count:
                    batch = receiver.peek_messages(max_count - len(peeked), sequence_number=next_sequence)
                    if not batch:
                        break
                    peeked.extend(batch)
                    next_sequence = (batch[-1].sequence_number or 0) + 1
        return [_to_port(message, locked=False) for message in peeked]

    def ping(self) -> None:
        """Raise DependencyUnavailable unless the namespace answers and the queue exists."""
        try:
            self._admin.get_queue_runtime_properties(self.queue_name)
        except AzureError as exc:
            raise DependencyUnavailable(
                f"Service Bus queue {self.queue_name!r} is not reachable ({type(exc).__name__}: {exc}); check "
                "ServiceBusConnection / ServiceBusConnection__fullyQualifiedNamespace and AGENT_JOBS_QUEUE"
            ) from exc

    # --- the consumer side ----------------------------------------------------------------------

    def receive(self, max_count: int = 1, wait_seconds: float = 0.0) -> list[QueueMessage]:
        """Peek-lock up to max_count messages, waiting at least a second (the broker needs a round trip).

        One receiver serves receive and settles, under one lock: a settle waits for a pending receive.
        """
        wait = max(wait_seconds, _MIN_RECEIVE_WAIT_SECONDS)
        with self._receiver_lock, _unavailable_on_connection_errors(f"receive from {self.queue_name}"):
            if self._receiver is None:
                self._receiver = self._client.get_queue_receiver(
                    self.queue_name, receive_mode=ServiceBusReceiveMode.PEEK_LOCK
                )
            batch = self._receiver.receive_messages(max_message_count=max_count, max_wait_time=wait)
        return [_to_port(message, locked=True) for message in batch]

    def complete(self, message: QueueMessage) -> None:
        with self._receiver_lock, _unavailable_on_connection_errors("completing a message"):
            self._live_receiver().complete_message(_received(message))

    def abandon(self, message: QueueMessage) -> None:
        with self._receiver_lock, _unavailable_on_connection_errors("abandoning a message"):
            self._live_receiver().abandon_message(_received(message))

    def dead_letter(self, message: QueueMessage, reason: str, description: str = "") -> None:
        with self._receiver_lock, _unavailable_on_connection_errors("dead-lettering a message"):
            self._live_receiver().dead_letter_message(_received(message), reason=reason, error_description=description)

    def renew_lock(self, message: QueueMessage) -> datetime:
        with self._receiver_lock, _unavailable_on_connection_errors("renewing a message lock"):
            return self._live_receiver().renew_message_lock(_received(message))

    def close(self) -> None:
        if self.continuations is not None:
            self.continuations.close()
        if self._renewer is not None:
            self._renewer.close()
        for handler in (self._sender, self._receiver, self._dead_letter_receiver):
            if handler is not None:
                handler.close()
        if not self._owns_client:
            return  # the adapter that made the client closes it
        self._client.close()
        self._admin.close()
        if self._credential is not None:
            self._credential.close()

    # --- internals ------------------------------------------------------------------------------

    def _dead_letters(self) -> ServiceBusReceiver:
        if self._dead_letter_receiver is None:
            self._dead_letter_receiver = self._client.get_queue_receiver(
                self.queue_name, sub_queue=ServiceBusSubQueue.DEAD_LETTER, receive_mode=ServiceBusReceiveMode.PEEK_LOCK
            )
        return self._dead_letter_receiver

    def _live_receiver(self) -> ServiceBusReceiver:
        if self._receiver is None:
            raise ValueError("nothing was received on this adapter, so there is nothing to settle")
        return self._receiver
