"""Ingestion jobs: large uploads ingested in batches through the step queue, durably and without duplicates.

Submitting writes each batch of files as a blob (`ingestions/{id}/batches/{n:06d}.json`), then
the job record, then the first batch's message (claim-check: the message carries only
`{ingestion_id, batch}`, message id `ingest:{id}:{n}`, so the broker drops a double send).
Batches run one after another, like a job's steps: batch n+1 is enqueued once batch n is
counted, so one ingestion holds one consumer at a time and agent steps keep flowing beside it
(extraction and chunking are CPU work; more threads of it only slow the API down).

A batch handler ingests its files with `knowledge.ingest_one`, which swaps each document's
chunks in atomically and skips a version already indexed; so a redelivered batch (after a
kill -9, a lost lock, an abandon) redoes its work without duplicating a chunk. The batch is
then marked done on the job record with an If-Match write that adds its counts once, the next
batch is enqueued and the batch's blob deleted; a delivery that finds its batch already done
only makes sure the next one is enqueued. The last delivery the broker allows writes the
failure on the record and enqueues the next batch before the message is dead-lettered, so
nothing disappears without a trail and one bad batch does not stop the rest.

Redoing part of a batch reports the documents that the lost delivery had already indexed as
`unchanged`: the chunk counts are exact, the added/unchanged split of a crashed batch is not.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from shared.contracts import Document, utcnow
from shared.engine.backends import Backends
from shared.engine.layout import ingestion_batch_key, ingestion_key
from shared.engine.updates import update_json
from shared.errors import Conflict, InvalidRequest, NotFound, ServiceError
from shared.ports import PreconditionFailed
from shared.services import knowledge

__all__ = [
    "IngestionJob",
    "IngestionMessage",
    "IngestionNotFound",
    "get_ingestion",
    "handle_batch",
    "is_ingestion_message",
    "retry_failed",
    "submit_ingestion",
]

log = logging.getLogger("agent.ingestion")
MESSAGE_KIND: Literal["ingest"] = "ingest"
MAX_REFUSALS_KEPT = 200

IngestionStatus = Literal["queued", "running", "succeeded", "failed"]


class IngestionNotFound(NotFound):
    fix = "check the ingestion id (the Location of the 202 answer, or `agentctl docs ingest --json`)"


class IngestionMessage(BaseModel):
    """The claim-check of one batch on the queue."""

    kind: Literal["ingest"] = MESSAGE_KIND
    ingestion_id: str
    batch: int = Field(ge=0)
    round: int = Field(0, ge=0, description="0, or the retry that sent it: a retry needs fresh message ids.")

    @property
    def message_id(self) -> str:
        base = f"{MESSAGE_KIND}:{self.ingestion_id}:{self.batch}"
        return f"{base}:r{self.round}" if self.round else base


class Refusal(BaseModel):
    name: str
    reason: str


class BatchFailure(BaseModel):
    batch: int
    delivery_count: int
    description: str
    at: datetime = Field(default_factory=utcnow)


class IngestionJob(BaseModel):
    """An ingestion job's record: its batches, progress and outcome counts."""

    id: str
    scope: str | None = None
    status: IngestionStatus = "queued"
    files: int
    batches: int
    batches_done: list[int] = Field(default_factory=list)
    files_done: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    refused: int = 0
    chunks: int = 0
    refusals: list[Refusal] = Field(default_factory=list, description=f"The first {MAX_REFUSALS_KEPT} refusals.")
    failures: list[BatchFailure] = Field(default_factory=list, description="Batches dead-lettered, with the error.")
    retries: int = Field(0, description="Times an operator retried the dead-lettered batches.")
    idempotency_key: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed")


class _BatchFile(BaseModel):
    name: str
    data: str  # base64


class _Batch(BaseModel):
    files: list[_BatchFile]
    # JSON documents (POST /api/documents with a large JSON list): ingested as they are, ids and all.
    documents: list[Document] = Field(default_factory=list)
    scope: str | None = None


def _dump(job: IngestionJob) -> bytes:
    return job.model_dump_json().encode()


def is_ingestion_message(body: bytes) -> bool:
    """True when a queue message is an ingestion batch (step messages carry job_id/step)."""
    if b'"ingestion_id"' not in body:
        return False
    try:
        return bool(json.loads(body).get("kind") == MESSAGE_KIND)
    except (ValueError, AttributeError):
        return False


def get_ingestion(b: Backends, ingestion_id: str) -> IngestionJob:
    found = b.objects.get(ingestion_key(ingestion_id)) if _valid_id(ingestion_id) else None
    if found is None:
        raise IngestionNotFound(f"no ingestion {ingestion_id}")
    return IngestionJob.model_validate_json(found.data)


def _valid_id(value: str) -> bool:
    return 1 <= len(value) <= 64 and all(ch.isalnum() or ch in "-_" for ch in value)


def submit_ingestion(
    b: Backends,
    files: Iterable[tuple[str, bytes]],
    *,
    documents: Iterable[Document] = (),
    scope: str | None = None,
    idempotency_key: str | None = None,
    batch_files: int | None = None,
) -> IngestionJob:
    """Store the files (then the JSON documents) in batches and queue one message per batch.

    The same idempotency key returns the same job. A batch holds up to INGEST_BATCH_FILES items.
    """
    size = max(1, batch_files or b.settings.ingest_batch_files)
    if idempotency_key is not None:
        digest = hashlib.sha256(f"{scope or ''}\x00{idempotency_key}".encode()).hexdigest()[:32]
        ingestion_id = f"ing-{digest}"
        existing = b.objects.get(ingestion_key(ingestion_id))
        if existing is not None:
            job = IngestionJob.model_validate_json(existing.data)
            _enqueue(b, job)  # a submit that crashed before its sends: the broker drops the repeats
            return job
    else:
        ingestion_id = f"ing-{uuid.uuid4().hex}"
    batches: list[_Batch] = [_Batch(files=[], scope=scope)]
    total = 0

    def room() -> _Batch:
        if len(batches[-1].files) + len(batches[-1].documents) >= size:
            batches.append(_Batch(files=[], scope=scope))
        return batches[-1]

    for name, data in files:
        room().files.append(_BatchFile(name=name, data=base64.b64encode(data).decode("ascii")))
        total += 1
    for document in documents:
        room().documents.append(document)
        total += 1
    if total == 0:
        raise InvalidRequest("no files to ingest")
    for n, batch in enumerate(batches):
        b.objects.put(ingestion_batch_key(ingestion_id, n), batch.model_dump_json().encode())
    job = IngestionJob(id=ingestion_id, scope=scope, files=total, batches=len(batches), idempotency_key=idempotency_key)
    try:
        b.objects.put_if_absent(ingestion_key(ingestion_id), _dump(job))
    except PreconditionFailed:  # the same key submitted twice at once: the first record stands
        job = get_ingestion(b, ingestion_id)
    _enqueue(b, job)
    log.info(
        "ingestion %s submitted: %d files in %d batches",
        job.id,
        job.files,
        job.batches,
        extra={"event": "ingestion_submitted", "ingestion_id": job.id},
    )
    return job


def _enqueue(b: Backends, job: IngestionJob) -> None:
    """Send the first batch that is neither done nor dead-lettered (if any); the broker drops a repeat."""
    settled = set(job.batches_done) | {f.batch for f in job.failures}
    for n in range(job.batches):
        if n not in settled:
            message = IngestionMessage(ingestion_id=job.id, batch=n, round=job.retries)
            b.queue.send(message.model_dump_json().encode(), message_id=message.message_id)
            return


class NothingToRetry(Conflict):
    kind = "nothing-to-retry"
    fix = "only a finished ingestion with dead-lettered batches can be retried (see its failures)"


def retry_failed(b: Backends, ingestion_id: str) -> IngestionJob:
    """Send the dead-lettered batches of a finished ingestion again (their files are kept until they succeed)."""
    job = get_ingestion(b, ingestion_id)
    if not job.finished or not job.failures:
        raise NothingToRetry(f"ingestion {ingestion_id} is {job.status} with {len(job.failures)} failed batch(es)")

    def change(current: IngestionJob | None) -> IngestionJob | None:
        if current is None or not current.finished or not current.failures:
            return None
        return current.model_copy(
            update={
                "failures": [],
                "retries": current.retries + 1,
                "status": "running",
                "finished_at": None,
                "updated_at": utcnow(),
            }
        )

    retried = _update(b, ingestion_id, change) or job
    _enqueue(b, retried)
    return retried


def handle_batch(b: Backends, body: bytes, delivery_count: int = 1) -> None:
    """Ingest one batch; idempotent. Raises (so the broker redelivers) when the batch could not be done."""
    try:
        message = IngestionMessage.model_validate_json(body)
    except ValidationError as exc:
        log.error("malformed ingestion message dropped: %s", exc.errors()[0]["msg"], extra={"event": "bad_message"})
        return
    found = b.objects.get(ingestion_key(message.ingestion_id))
    if found is None:
        log.warning("ingestion message for unknown ingestion %s dropped", message.ingestion_id)
        return
    job = IngestionJob.model_validate_json(found.data)
    if message.batch in job.batches_done:
        _enqueue(b, job)  # counted before a crash: only make sure the next batch is on its way
        return
    try:
        _run_batch(b, job, message.batch)
    except Exception as exc:
        if delivery_count >= b.settings.queue_max_delivery_count:
            failed = _record_failure(b, job.id, message.batch, delivery_count, exc)
            if failed is not None:
                _enqueue(b, failed)
        raise


def _run_batch(b: Backends, job: IngestionJob, batch: int) -> None:
    stored = b.objects.get(ingestion_batch_key(job.id, batch))
    if stored is None:  # deleted after its batch was marked done by a delivery we raced with
        if batch in get_ingestion(b, job.id).batches_done:
            return
        raise RuntimeError(f"batch {batch} of ingestion {job.id} is missing from storage")
    contents = _Batch.model_validate_json(stored.data)
    if job.status == "queued":
        _update(b, job.id, _started)
    outcomes = knowledge.ingest(b, ((f.name, base64.b64decode(f.data)) for f in contents.files), scope=contents.scope)
    outcomes += [_index_json(b, document, contents.scope) for document in contents.documents]
    counted = _update(b, job.id, _counted(batch, outcomes))
    if counted is not None:
        _enqueue(b, counted)
    b.objects.delete(ingestion_batch_key(job.id, batch))


def _index_json(b: Backends, document: Document, scope: str | None) -> knowledge.IndexedDocument:
    """One JSON document of a batch; one the service refuses (a client error) is reported, not retried."""
    try:
        (outcome,) = knowledge.index_documents(b, [document], scope=scope)
    except ServiceError as exc:
        if exc.status >= 500:  # the index or storage is down: the batch is redelivered
            raise
        return knowledge.refused(document.id, exc)
    return outcome


def _update(b: Backends, ingestion_id: str, change: Any) -> IngestionJob | None:
    return update_json(
        b.objects, ingestion_key(ingestion_id), change, load=IngestionJob.model_validate_json, dump=_dump
    )


def _started(job: IngestionJob | None) -> IngestionJob | None:
    if job is None or job.status != "queued":
        return None
    return job.model_copy(update={"status": "running", "updated_at": utcnow()})


def _finish_if_complete(job: IngestionJob) -> IngestionJob:
    settled = len(job.batches_done) + len({f.batch for f in job.failures} - set(job.batches_done))
    if settled >= job.batches and not job.finished:
        job.status = "failed" if set(f.batch for f in job.failures) - set(job.batches_done) else "succeeded"
        job.finished_at = utcnow()
    return job


def _counted(batch: int, outcomes: list[knowledge.IndexedDocument]) -> Any:
    def change(job: IngestionJob | None) -> IngestionJob | None:
        if job is None or batch in job.batches_done:
            return None
        updated = job.model_copy(deep=True)
        updated.batches_done.append(batch)
        updated.files_done += len(outcomes)
        for outcome in outcomes:
            if outcome.status == "refused":
                updated.refused += 1
                if len(updated.refusals) < MAX_REFUSALS_KEPT:
                    updated.refusals.append(Refusal(name=outcome.name or "", reason=outcome.reason or ""))
            else:
                setattr(updated, outcome.status, getattr(updated, outcome.status) + 1)
                updated.chunks += outcome.chunks
        if updated.status == "queued":
            updated.status = "running"
        updated.updated_at = utcnow()
        return _finish_if_complete(updated)

    return change


def _record_failure(
    b: Backends, ingestion_id: str, batch: int, delivery_count: int, exc: Exception
) -> IngestionJob | None:
    description = f"{type(exc).__name__}: {exc}"[:1000]

    def change(job: IngestionJob | None) -> IngestionJob | None:
        if job is None or batch in job.batches_done or any(f.batch == batch for f in job.failures):
            return None
        updated = job.model_copy(deep=True)
        updated.failures.append(BatchFailure(batch=batch, delivery_count=delivery_count, description=description))
        updated.updated_at = utcnow()
        return _finish_if_complete(updated)

    updated = _update(b, ingestion_id, change)
    log.error(
        "ingestion %s batch %d dead-lettered after %d deliveries: %s",
        ingestion_id,
        batch,
        delivery_count,
        description,
        extra={"event": "ingestion_batch_dead_lettered", "ingestion_id": ingestion_id},
    )
    return updated
