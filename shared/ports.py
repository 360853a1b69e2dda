"""Ports: the small protocols the domain and services need. No SDK imports here.

Each port has an embedded implementation (shared/adapters/local) and an Azure one
(shared/adapters/azure); tests/contract runs the same suite against each.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from shared.contracts import Chunk, SearchHit, Usage

# --- errors every adapter maps its SDK's errors to -------------------------------------------


class PreconditionFailed(Exception):
    """A create-only write found the object, or an If-Match write found another ETag (HTTP 412/409)."""


# --- object storage (Blob Storage / embedded) --------------------------------------------------


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    etag: str
    last_modified: datetime | None = None


@runtime_checkable
class ObjectStore(Protocol):
    """Blob semantics over keys "container/path". The first segment is the container."""

    def get(self, key: str) -> StoredObject | None: ...

    def put(self, key: str, data: bytes, *, if_match: str | None = None) -> str:
        """Write and return the new ETag. With if_match, raise PreconditionFailed unless it matches."""
        ...

    def put_if_absent(self, key: str, data: bytes) -> str:
        """Create-only write (If-None-Match: *). Raise PreconditionFailed if the key exists."""
        ...

    def delete(self, key: str, *, if_match: str | None = None) -> bool:
        """Delete; False if it did not exist. With if_match, PreconditionFailed on another ETag."""
        ...

    def list(self, prefix: str) -> Iterator[str]:
        """Keys starting with prefix, in lexicographic order."""
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

    def send(self, body: bytes, *, message_id: str, scheduled_at: datetime | None = None) -> None:
        """Enqueue; a message_id seen within the duplicate-detection window is dropped silently."""
        ...

    def counts(self) -> QueueCounts: ...

    def peek_dead_letters(self, max_count: int = 100) -> list[QueueMessage]: ...

    def receive_dead_letters(self, max_count: int = 100, lock_seconds: float = 60.0) -> list[QueueMessage]:
        """Lock dead-lettered messages for settling; unsettled ones unlock after lock_seconds."""
        ...

    def complete_dead_letter(self, message: QueueMessage) -> None: ...

    def ping(self) -> None: ...


# --- the knowledge index (AI Search / embedded) -------------------------------------------------


@runtime_checkable
class KnowledgeIndex(Protocol):
    def upsert(self, chunks: list[Chunk]) -> int: ...

    def delete_document(self, doc_id: str) -> int:
        """Remove every chunk of doc_id; return how many."""
        ...

    def search(self, query: str, *, top: int = 5, doc_id: str | None = None) -> list[SearchHit]: ...

    def get_chunks(self, doc_id: str, chunk_id: int | None = None) -> list[Chunk]: ...

    def export(self, *, after_key: str | None = None, size: int = 1000) -> list[Chunk]:
        """Chunks ordered by key, strictly after after_key: paging that never needs $skip."""
        ...

    def count(self) -> int: ...

    def definition(self) -> dict[str, Any]:
        """The index definition, for backups."""
        ...

    def reset(self) -> None:
        """Drop every chunk (restore rebuilds from a backup)."""
        ...

    def ping(self) -> None: ...


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
        """One model turn over OpenAI-format messages and tool specs."""
        ...

    def ping(self) -> None: ...
