"""Ports: the small protocols the domain and services need. No SDK imports here.

Each port has an embedded implementation (shared/adapters/local) and an Azure one
(shared/adapters/azure); tests/contract runs the same suite against each.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from shared.contracts import Chunk, SearchHit, Usage

# --- errors every adapter maps its SDK's errors to -------------------------------------------


class PreconditionFailed(Exception):
    """A create-only write found the object, or an If-Match write found another ETag (HTTP 412/409)."""


class RejectMessage(Exception):
    """Raised by a queue-triggered handler: this message can never be processed; dead-letter it with a reason.

    Not a failure of any job (a malformed body, a job that does not exist, a step that is not
    its job's next one). The embedded consumer dead-letters it at once with `reason` and
    `description`. The Azure Functions Service Bus trigger cannot dead-letter from a plain
    binding: there the exception abandons the message, the broker dead-letters it after
    MaxDeliveryCount (each delivery is rejected again cheaply, without running a step), and the
    sweep recomputes the same reason from the message body. Either way it ends in the
    dead-letter queue, where the sweep reports and purges it.
    """

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(f"{reason}: {description}")
        self.reason = reason
        self.description = description


# --- object storage (Blob Storage / embedded) --------------------------------------------------


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    etag: str
    last_modified: datetime | None = None


@dataclass(frozen=True)
class ObjectWrite:
    """One write of ObjectStore.put_many: unconditional, or create-only with if_absent=True."""

    key: str
    data: bytes
    if_absent: bool = False


@runtime_checkable
class ObjectStore(Protocol):
    """Blob semantics over keys "container/path". The first segment is the container."""

    local_reads: bool
    """True when get() reads a local file in microseconds (the embedded store): an event loop may call
    it directly rather than hand it to a thread. False for a network store (Blob Storage), where a read
    on the loop would hold every other request for a round trip."""

    def get(self, key: str) -> StoredObject | None:
        """The object with its ETag, or None when the key does not exist.

        Raises DependencyUnavailable when the store cannot be reached.

            found = objects.get("jobs/job-1.json")
            job = Job.model_validate_json(found.data) if found else None
        """
        ...

    def put(self, key: str, data: bytes, *, if_match: str | None = None, durable: bool = True) -> str:
        """Write unconditionally (or, with if_match, only over that ETag); return the new ETag.

        Raises PreconditionFailed when if_match is given and the stored ETag differs (or the key is
        gone), DependencyUnavailable when the store cannot be reached. durable=False lets a store
        acknowledge before the write is on disk: an OS crash may then lose it (never tear it), so it
        is only for records a later write repairs. Stores whose every write is durable (Blob
        Storage) ignore it.
        """
        ...

    def put_if_absent(self, key: str, data: bytes) -> str:
        """Create-only write (If-None-Match: *); return the new ETag.

        Raises PreconditionFailed if the key exists: the first writer wins, which is how a step
        commits its checkpoint exactly once. DependencyUnavailable when unreachable.
        """
        ...

    def put_many(self, writes: Sequence[ObjectWrite]) -> list[str]:
        """Durable writes in order, in one commit where the store has them; their new ETags, in order.

        Each write is what put() (or, with if_absent, put_if_absent()) would do. The first write that
        fails stops the rest: its error is raised (PreconditionFailed for an if_absent key that
        exists), and the writes before it stand, since Blob Storage has no transaction over several
        blobs and writes them one by one. The embedded store commits them together, with one fsync.

            listing = ObjectWrite("listing/acme/job-1", b"")
            record = ObjectWrite("jobs/job-1.json", data, if_absent=True)
            objects.put_many([listing, record])  # PreconditionFailed: job-1 exists (its listing entry was written)
        """
        ...

    def delete(self, key: str, *, if_match: str | None = None, durable: bool = True) -> bool:
        """Delete the object; return False if it did not exist.

        durable=False, as for put(): an OS crash may undo the delete, so only for objects whose
        leftover is harmless (a health probe, which the ops/ retention removes in any case).

        Raises PreconditionFailed when if_match is given and the stored ETag differs,
        DependencyUnavailable when the store cannot be reached.
        """
        ...

    def list(self, prefix: str) -> Iterator[str]:
        """Keys starting with prefix, in lexicographic order, fetched lazily page by page.

        Raises DependencyUnavailable (while iterating) when the store cannot be reached.
        """
        ...

    def ping(self) -> None:
        """Raise DependencyUnavailable if the store cannot be reached."""
        ...


# --- the step queue (Service Bus / embedded) ---------------------------------------------------


@dataclass
class QueueMessage:
    message_id: str
    body: bytes
    sequence_number: int
    delivery_count: int = 0
    enqueued_at: datetime | None = None
    scheduled_at: datetime | None = None
    dead_letter_reason: str | None = None
    dead_letter_description: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    # Opaque handle the adapter needs to settle a locked message.
    lock_token: Any = None


@dataclass(frozen=True)
class QueueCounts:
    active: int
    scheduled: int
    dead_lettered: int


@runtime_checkable
class StepQueue(Protocol):
    """What the services need of the job queue: send, inspect, and work the dead-letter sub-queue.

    Receiving live messages is the trigger's job (Functions in Azure, the embedded runtime
    locally), so it is not part of this port.
    """

    def send(
        self, body: bytes, *, message_id: str, scheduled_at: datetime | None = None, continuation: bool = False
    ) -> None:
        """Enqueue a message, visible now or at scheduled_at.

        A message_id seen within the duplicate-detection window is dropped silently (so a step
        sent twice runs once). continuation marks a later step of a job already started: it is
        served before first steps of new jobs, so started jobs finish under overload. Raises
        DependencyUnavailable when the broker cannot be reached.
        """
        ...

    def counts(self) -> QueueCounts:
        """Active, scheduled and dead-lettered message counts (the runbook's queue length).

        Raises DependencyUnavailable when the broker cannot be reached.
        """
        ...

    def peek_dead_letters(self, max_count: int = 100) -> list[QueueMessage]:
        """Up to max_count dead-lettered messages, oldest first, without locking them.

        The messages carry dead_letter_reason and dead_letter_description; they cannot be settled.
        Raises DependencyUnavailable when the broker cannot be reached.
        """
        ...

    def receive_dead_letters(self, max_count: int = 100, lock_seconds: float = 60.0) -> list[QueueMessage]:
        """Lock up to max_count dead-lettered messages for settling, oldest first.

        Messages not settled with complete_dead_letter unlock after lock_seconds and are received
        again later. Returns [] when none is available; DependencyUnavailable when unreachable.
        """
        ...

    def complete_dead_letter(self, message: QueueMessage) -> None:
        """Remove a dead-lettered message received with receive_dead_letters.

        Raises an adapter error when its lock was lost (another reader will see it again), and
        DependencyUnavailable when the broker cannot be reached.
        """
        ...

    def abandon_dead_letter(self, message: QueueMessage) -> None:
        """Release a received dead letter unsettled, so the next receive (the next sweep) sees it at once.

        Raises an adapter error when its lock was lost, DependencyUnavailable when the broker cannot be reached.
        """
        ...

    def peek_live(self, max_count: int = 1000) -> list[QueueMessage]:
        """Up to max_count messages not dead-lettered (waiting, scheduled or being processed); locks nothing.

        The stuck-job detector reads their message ids ("{job_id}:{step}[:...]") to tell a job whose
        next step is on its way from one whose next step was lost. DependencyUnavailable when the
        broker cannot be reached.
        """
        ...

    def ping(self) -> None:
        """Return when the queue answers; raise DependencyUnavailable otherwise."""
        ...


# --- the knowledge index (AI Search / embedded) -------------------------------------------------


@runtime_checkable
class KnowledgeIndex(Protocol):
    """The searchable chunks of the knowledge base (Azure AI Search, or an SQLite file ranked by BM25 when embedded)."""

    def upsert(self, chunks: list[Chunk]) -> int:
        """Add or replace chunks by key ({doc_id}--c{chunk_id}); return how many were written.

        Raises DependencyUnavailable when the index cannot be reached.
        """
        ...

    def delete_document(self, doc_id: str) -> int:
        """Remove every chunk of doc_id; return how many (0 when there were none).

        Raises DependencyUnavailable when the index cannot be reached.
        """
        ...

    def replace_document(self, doc_id: str, chunks: list[Chunk]) -> int:
        """Make chunks the whole of doc_id (a new version), leaving none of the old behind; return len(chunks).

        The embedded index swaps them in one transaction, so a search sees the old version or the
        new, never a mix. Idempotent: replacing with the same chunks again changes nothing.
        Raises DependencyUnavailable when the index cannot be reached.
        """
        ...

    def search(
        self, query: str, *, top: int = 5, doc_id: str | None = None, scopes: Sequence[str] | None = None
    ) -> list[SearchHit]:
        """The best `top` chunks for a free-text query (English or Japanese), best first.

        doc_id narrows the search to one document. scopes is a security filter: only chunks whose
        scope is listed are ranked and returned (None: every scope, for maintenance and admins only;
        [] matches nothing). An empty result is [], never an error; DependencyUnavailable when the
        index cannot be reached.

            hits = index.search("how long are backups kept", top=3, scopes=["acme", "shared"])
        """
        ...

    def get_chunks(
        self, doc_id: str, chunk_id: int | None = None, *, scopes: Sequence[str] | None = None
    ) -> list[Chunk]:
        """A document's chunks in order (or the one chunk_id), [] when there is no such document.

        scopes filters as in search: a chunk outside them reads as missing.
        Raises DependencyUnavailable when the index cannot be reached.
        """
        ...

    def export(self, *, after_key: str | None = None, size: int = 1000) -> list[Chunk]:
        """Up to size chunks ordered by key, strictly after after_key: paging that never needs $skip.

        Raises DependencyUnavailable when the index cannot be reached.
        """
        ...

    def count(self) -> int:
        """How many chunks the index holds; DependencyUnavailable when unreachable."""
        ...

    def definition(self) -> dict[str, Any]:
        """The index definition (fields, analyzers, vector profile), stored with backups."""
        ...

    def reset(self) -> None:
        """Drop every chunk (restore rebuilds from a backup); DependencyUnavailable when unreachable."""
        ...

    def ping(self) -> None:
        """Return when the index answers; raise DependencyUnavailable otherwise."""
        ...


# --- the chat model (OpenAI-compatible / offline) ----------------------------------------------


class TransientModelError(Exception):
    """429, 5xx, timeouts: try the step again later."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentModelError(Exception):
    """Content filter, auth, invalid model: the job fails, nothing more is spent."""

    def __init__(self, message: str, reason: str = "model_rejected") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, exactly as the model produced it


@dataclass
class ModelTurn:
    content: str | None
    tool_calls: list[ToolCall]
    usage: Usage
    model: str = ""


@runtime_checkable
class ChatModel(Protocol):
    name: str
    offline: bool

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> ModelTurn:
        """One model turn over OpenAI-format messages and tool specs: text and/or tool calls, with usage.

        Raises TransientModelError (429, 5xx, timeouts, unreachable; retry_after when the server
        said) or PermanentModelError (content filter, auth, unknown model): never an SDK error.

            turn = model.complete([{"role": "user", "content": "hi"}], tools=[])
        """
        ...

    def ping(self) -> None:
        """Return when the model endpoint answers; raise DependencyUnavailable otherwise."""
        ...
