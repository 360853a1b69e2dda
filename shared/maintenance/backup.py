"""Backups of the knowledge index and the job state, and restores that prove what they restored.

Layout, one folder per backup (the id is its UTC start time):
  backups/{id}/index/definition.json        the index definition (KnowledgeIndex.definition())
  backups/{id}/index/chunks-00001.jsonl     every chunk (with its scope), in key order, 1000 per file (by key)
  backups/{id}/objects/objects-00001.jsonl  job records, tenant job lists, reports, token ledgers,
                                            re-submission logs and idempotency records: {"key", "data"}
  backups/{id}/manifest.json                written last: counts, sizes and SHA-256 of every file

A folder without a manifest is an unfinished backup (the run died); the next backup deletes it.
Checkpoints are left out: they are the bulk of the storage, immutable, and retention prunes them;
Blob Storage's own redundancy covers them. Short-term memory is left out too (it expires).

Restore verifies every file against the manifest before it touches the index, so a damaged
backup leaves the live index as it was; then it rebuilds the index, puts back the state objects
that are missing (never overwriting newer ones), and checks the rebuilt index's count and
content digest against the manifest. Any difference raises RestoreMismatch: an error, not a warning.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime

from pydantic import BaseModel, Field, ValidationError

from shared.contracts import Chunk, utcnow
from shared.engine import layout
from shared.engine.backends import Backends
from shared.errors import InvalidRequest, NotFound
from shared.maintenance.lease import exclusive
from shared.ports import PreconditionFailed

log = logging.getLogger("agent.maintenance")

Progress = Callable[[int, int | None, str], None]

LEASE = "knowledge-index"  # backup and restore exclude each other: a backup mid-restore would be half empty
CHUNKS_PER_FILE = 1000
OBJECTS_PER_FILE = 500
FORMAT = 1
_ID_RE = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")


class BackupNotFound(NotFound):
    fix = "pick a backup id from `agentctl backup list` (GET /api/admin/backups)"


class RestoreMismatch(InvalidRequest):
    """The backup, or the index rebuilt from it, is not what the manifest says."""

    kind = "restore-mismatch"
    fix = (
        "the backup does not match what it claims (missing or changed files); pick another one with "
        "`agentctl backup list`"
    )

    def __init__(self, detail: str) -> None:
        super().__init__(f"restore refused: {detail}")


class BackupFile(BaseModel):
    name: str = Field(description="Path inside the backup folder.")
    items: int = Field(description="Chunks or objects in the file (1 for the definition).")
    bytes: int
    sha256: str


class BackupManifest(BaseModel):
    id: str = Field(description="The backup's UTC start time, e.g. 20250101T180000Z; pass it to restore.")
    format: int = FORMAT
    created_at: datetime
    finished_at: datetime
    index_name: str
    chunks: int = Field(description="Chunks exported from the knowledge index.")
    documents: int = Field(description="Distinct documents among them.")
    index_sha256: str = Field(description="SHA-256 of every chunk's JSON line, in key order.")
    scoped: bool = Field(
        False,
        description="Its chunk lines carry each chunk's scope. A backup from before scopes does not: its chunks "
        "restore into the shared scope, and its digest is checked over the lines without the scope.",
    )
    definition_sha256: str
    objects: int = Field(description="State objects (job records, reports, ledgers, ...) exported.")
    bytes: int
    files: list[BackupFile]

    def counts(self) -> dict[str, int]:
        return {"chunks": self.chunks, "documents": self.documents, "objects": self.objects, "bytes": self.bytes}


class RestoreResult(BaseModel):
    backup_id: str
    chunks: int
    documents: int
    index_sha256: str = Field(description="Digest of the rebuilt index; equal to the manifest's.")
    verified: bool = Field(description="Count and digest of the rebuilt index match the manifest.")
    objects_restored: int = Field(description="State objects that were missing and were put back.")
    objects_present: int = Field(description="State objects that exist already and were left as they are.")
    definition_changed: bool = Field(description="The live index definition differs from the backed-up one.")
    duration_ms: float

    def counts(self) -> dict[str, int]:
        return {
            "chunks": self.chunks,
            "documents": self.documents,
            "objects_restored": self.objects_restored,
            "objects_present": self.objects_present,
        }


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _lines(items: list[str]) -> bytes:
    return "".join(f"{item}\n" for item in items).encode()


def _records(data: bytes) -> list[str]:
    # Split on "\n" only: str.splitlines() would also split inside JSON strings holding U+2028 and friends.
    return data.decode("utf-8").split("\n")[:-1]


def _definition_bytes(b: Backends) -> bytes:
    return json.dumps(b.index.definition(), sort_keys=True, default=str, ensure_ascii=False).encode()


def _noop(done: int, total: int | None, what: str) -> None:
    return None


def _export_chunks(b: Backends) -> Iterator[list[Chunk]]:
    after: str | None = None
    while True:
        page = b.index.export(after_key=after, size=CHUNKS_PER_FILE)
        if not page:
            return
        yield page
        if len(page) < CHUNKS_PER_FILE:
            return
        after = page[-1].key


def _object_line(key: str, data: bytes) -> str:
    try:
        return json.dumps({"key": key, "data": data.decode("utf-8")}, ensure_ascii=False)
    except UnicodeDecodeError:
        return json.dumps({"key": key, "b64": base64.b64encode(data).decode()})


def _new_id(b: Backends) -> str:
    base = utcnow().strftime("%Y%m%dT%H%M%SZ")
    candidate, n = base, 1
    while next(iter(b.objects.list(f"backups/{candidate}/")), None) is not None:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def run_backup(b: Backends, progress: Progress | None = None) -> BackupManifest:
    """Export the index and the state objects to backups/{id}/, then keep the newest BACKUPS_TO_KEEP."""
    report = progress or _noop
    started = utcnow()
    with exclusive(b.objects, LEASE) as lease:
        backup_id = _new_id(b)
        prefix = f"backups/{backup_id}/"
        files: list[BackupFile] = []

        def write(name: str, data: bytes, items: int) -> None:
            b.objects.put_if_absent(prefix + name, data)
            files.append(BackupFile(name=name, items=items, bytes=len(data), sha256=_sha(data)))
            lease.keep_alive()

        definition = _definition_bytes(b)
        write("index/definition.json", definition, 1)
        total = b.index.count()
        digest, chunks, documents = hashlib.sha256(), 0, set[str]()
        for n, page in enumerate(_export_chunks(b), start=1):
            data = _lines([_chunk_line(c) for c in page])
            digest.update(data)
            write(f"index/chunks-{n:05d}.jsonl", data, len(page))
            chunks += len(page)
            documents.update(c.doc_id for c in page)
            report(chunks, max(total, chunks), "chunks")
        objects, pending, page_no = 0, [], 0
        for key in (k for container in layout.BACKED_UP for k in b.objects.list(f"{container}/")):
            found = b.objects.get(key)
            if found is None:
                continue  # deleted while we listed
            pending.append(_object_line(key, found.data))
            if len(pending) == OBJECTS_PER_FILE:
                page_no += 1
                write(f"objects/objects-{page_no:05d}.jsonl", _lines(pending), len(pending))
                objects += len(pending)
                pending = []
                report(objects, None, "objects")
        if pending:
            page_no += 1
            write(f"objects/objects-{page_no:05d}.jsonl", _lines(pending), len(pending))
            objects += len(pending)
            report(objects, None, "objects")
        manifest = BackupManifest(
            id=backup_id,
            created_at=started,
            finished_at=utcnow(),
            index_name=b.settings.search_index_name,
            chunks=chunks,
            documents=len(documents),
            index_sha256=digest.hexdigest(),
            scoped=True,
            definition_sha256=_sha(definition),
            objects=objects,
            bytes=sum(f.bytes for f in files),
            files=files,
        )
        b.objects.put_if_absent(prefix + "manifest.json", manifest.model_dump_json(indent=2).encode())
        pruned = _prune(b, keep=max(1, b.settings.backups_to_keep), current=backup_id)
    log.info(
        "backup %s: %s chunks of %s documents, %s objects, %s bytes; %s old backup(s) deleted",
        backup_id,
        chunks,
        len(documents),
        objects,
        manifest.bytes,
        len(pruned),
        extra={"event": "backup_done", "count": chunks},
    )
    return manifest


def _newest_first(ids: list[str]) -> list[str]:
    """Backup ids by start time, newest first ("…Z-10" after "…Z-9", which string order gets wrong)."""

    def order(backup_id: str) -> tuple[str, int]:
        base, _, n = backup_id.partition("-")
        return base, int(n) if n.isdigit() else 1

    return sorted(ids, key=order, reverse=True)


def _backup_folders(b: Backends) -> dict[str, bool]:
    """{backup id: has a manifest} for every folder under backups/."""
    folders: dict[str, bool] = {}
    for key in b.objects.list("backups/"):
        backup_id, _, rest = key[len("backups/") :].partition("/")
        folders[backup_id] = folders.get(backup_id, False) or rest == "manifest.json"
    return folders


def _delete_backup(b: Backends, backup_id: str) -> None:
    # The manifest first: a deletion cut short leaves an unfinished folder, never a "complete" broken one.
    b.objects.delete(f"backups/{backup_id}/manifest.json")
    for key in list(b.objects.list(f"backups/{backup_id}/")):
        b.objects.delete(key)


def _prune(b: Backends, *, keep: int, current: str) -> list[str]:
    folders = _backup_folders(b)
    complete = _newest_first([i for i, done in folders.items() if done])
    # Under the lease no other backup is being written, so a folder without a manifest is debris.
    doomed = complete[keep:] + [i for i, done in folders.items() if not done and i != current]
    for backup_id in doomed:
        _delete_backup(b, backup_id)
    return doomed


def list_backups(b: Backends) -> list[BackupManifest]:
    """Complete backups, newest first."""
    found = []
    folders = _backup_folders(b)
    for backup_id in _newest_first([i for i, done in folders.items() if done]):
        try:
            found.append(_manifest(b, backup_id))
        except RestoreMismatch as exc:
            log.warning("%s", exc, extra={"event": "backup_unreadable"})
    return found


def _manifest(b: Backends, backup_id: str) -> BackupManifest:
    if not _ID_RE.match(backup_id):
        raise BackupNotFound(f"no backup {backup_id!r}: backup ids look like 20250101T180000Z")
    found = b.objects.get(f"backups/{backup_id}/manifest.json")
    if found is None:
        raise BackupNotFound(f"no backup {backup_id} (or it never finished); list backups to choose another")
    try:
        return BackupManifest.model_validate_json(found.data)
    except ValidationError as exc:
        raise RestoreMismatch(f"backup {backup_id}: manifest.json is unreadable ({exc.errors()[0]['msg']})") from None


def _read_verified(b: Backends, backup_id: str, entry: BackupFile) -> bytes:
    found = b.objects.get(f"backups/{backup_id}/{entry.name}")
    if found is None:
        raise RestoreMismatch(f"backup {backup_id}: {entry.name} is missing")
    actual = _sha(found.data)
    if actual != entry.sha256 or len(found.data) != entry.bytes:
        raise RestoreMismatch(
            f"backup {backup_id}: {entry.name} is corrupted: SHA-256 {actual[:16]}…, "
            f"{len(found.data)} bytes; the manifest says {entry.sha256[:16]}…, {entry.bytes} bytes"
        )
    return found.data


def _parse_chunks(backup_id: str, entry: BackupFile, data: bytes) -> list[Chunk]:
    try:
        chunks = [Chunk.model_validate_json(line) for line in _records(data)]
    except (ValidationError, UnicodeDecodeError) as exc:
        raise RestoreMismatch(f"backup {backup_id}: {entry.name} does not hold chunks ({exc})") from None
    if len(chunks) != entry.items:
        raise RestoreMismatch(
            f"backup {backup_id}: {entry.name} holds {len(chunks)} chunks, the manifest says {entry.items}"
        )
    return chunks


def _verify_files(b: Backends, manifest: BackupManifest, report: Progress) -> None:
    """Every file whole and parseable, and the chunk files add up to the manifest's count and digest."""
    digest, chunks, objects = hashlib.sha256(), 0, 0
    for n, entry in enumerate(manifest.files, start=1):
        data = _read_verified(b, manifest.id, entry)
        if entry.name.startswith("index/chunks-"):
            chunks += len(_parse_chunks(manifest.id, entry, data))
            digest.update(data)
        elif entry.name.startswith("objects/"):
            objects += data.count(b"\n")
        report(n, len(manifest.files), "files verified")
    if objects != manifest.objects:
        raise RestoreMismatch(
            f"backup {manifest.id}: its object files hold {objects} objects; the manifest says {manifest.objects}"
        )
    if chunks != manifest.chunks or digest.hexdigest() != manifest.index_sha256:
        raise RestoreMismatch(
            f"backup {manifest.id}: its chunk files hold {chunks} chunks with digest "
            f"{digest.hexdigest()[:16]}…; the manifest says {manifest.chunks}, "
            f"{manifest.index_sha256[:16]}…"
        )


def _chunk_line(chunk: Chunk, *, scoped: bool = True) -> str:
    """A chunk's line in a backup; without its scope as a backup from before scopes wrote it."""
    return chunk.model_dump_json() if scoped else chunk.model_dump_json(exclude={"scope"})


def _index_digest(b: Backends, *, scoped: bool = True) -> tuple[int, int, str]:
    digest, chunks, documents = hashlib.sha256(), 0, set[str]()
    for page in _export_chunks(b):
        digest.update(_lines([_chunk_line(c, scoped=scoped) for c in page]))
        chunks += len(page)
        documents.update(c.doc_id for c in page)
    return chunks, len(documents), digest.hexdigest()


def restore(b: Backends, backup_id: str, progress: Progress | None = None) -> RestoreResult:
    """Rebuild the index from a backup and put back missing state objects; RestoreMismatch on any difference."""
    report = progress or _noop
    started = time.perf_counter()
    with exclusive(b.objects, LEASE) as lease:
        manifest = _manifest(b, backup_id)
        _verify_files(b, manifest, report)
        definition_changed = _sha(_definition_bytes(b)) != manifest.definition_sha256
        log.warning(
            "restore %s: rebuilding the knowledge index (%s chunks)",
            backup_id,
            manifest.chunks,
            extra={"event": "restore_started", "count": manifest.chunks},
        )
        b.index.reset()
        loaded = 0
        for entry in manifest.files:
            if entry.name.startswith("index/chunks-"):
                chunks = _parse_chunks(backup_id, entry, _read_verified(b, backup_id, entry))
                b.index.upsert(chunks)
                loaded += len(chunks)
                report(loaded, manifest.chunks, "chunks")
                lease.keep_alive()
        restored, present = 0, 0
        for entry in manifest.files:
            if entry.name.startswith("objects/"):
                for line in _records(_read_verified(b, backup_id, entry)):
                    record = json.loads(line)
                    data = record["data"].encode() if "data" in record else base64.b64decode(record["b64"])
                    try:
                        b.objects.put_if_absent(record["key"], data)
                        restored += 1
                    except PreconditionFailed:
                        present += 1  # the live object is newer than the backup's: keep it
                report(restored + present, manifest.objects, "objects")
                lease.keep_alive()
        chunks_now, documents_now, digest_now = _index_digest(b, scoped=manifest.scoped)
    if chunks_now != manifest.chunks or digest_now != manifest.index_sha256:
        raise RestoreMismatch(
            f"restore {backup_id}: the rebuilt index holds {chunks_now} chunks with digest "
            f"{digest_now[:16]}…; the backup has {manifest.chunks}, {manifest.index_sha256[:16]}… "
            "(was the index written to during the restore?)"
        )
    result = RestoreResult(
        backup_id=backup_id,
        chunks=chunks_now,
        documents=documents_now,
        index_sha256=digest_now,
        verified=True,
        objects_restored=restored,
        objects_present=present,
        definition_changed=definition_changed,
        duration_ms=round((time.perf_counter() - started) * 1000, 3),
    )
    log.info(
        "restore %s: %s chunks of %s documents verified; %s objects put back, %s already present",
        backup_id,
        chunks_now,
        documents_now,
        restored,
        present,
        extra={"event": "restore_done", "count": chunks_now},
    )
    return result
