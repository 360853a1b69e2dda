"""Repositories over the ObjectStore port: checkpoints, job records, reports.

Layout (one container per kind, as in Blob Storage):
  checkpoints/{job_id}/{n:06d}.json   immutable, create-only: the commit point of step n; its state
                                      in full (a snapshot) or as the change from step n-1 (a delta)
  jobs/{job_id}.json                  the job record, a projection, updated with If-Match
  tenants/{tenant}/jobs/{newest-first key}   empty markers: a tenant's jobs, newest first
  progress/{job_id}/{page:04d}.json   a long job's earlier progress, PROGRESS_PAGE_STEPS steps a page
  reports/{job_id}.json               the accepted (or kept-for-inspection) report
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from shared.contracts import Checkpoint, Job, Report, StepSummary
from shared.engine import layout, watch
from shared.engine.job import stamped
from shared.engine.layout import checkpoint_key
from shared.engine.updates import update_json
from shared.errors import CorruptRecord
from shared.ports import ObjectStore, ObjectWrite, PreconditionFailed

log = logging.getLogger("agent.storage")
_MAX_TS = 10**13  # milliseconds; inverted so lexicographic listing is newest first


def _dump(job: Job) -> bytes:
    return job.model_dump_json().encode()


# A job's record keeps the progress of its open page only: steps of a page the record has moved past
# live in their own object, written once, so a step rewrites at most this many lines of progress.
PROGRESS_PAGE_STEPS = 32
_PAGE = TypeAdapter(list[StepSummary])

# A full snapshot at least every this many steps bounds how many deltas a read applies.
SNAPSHOT_EVERY = 25
# States of recent checkpoints kept in memory: the base of the next step's delta (jobs in flight).
_STATES_KEPT = 64

M = TypeVar("M", bound=BaseModel)


def _sealed_pages(job: Job) -> int:
    """How many pages of job's progress live in their own objects: those before its first own line."""
    if not job.progress:
        return 0
    return (job.progress[0].step - 1) // PROGRESS_PAGE_STEPS


def parse_page(key: str, data: bytes) -> list[StepSummary]:
    try:
        return _PAGE.validate_json(data)
    except ValidationError as exc:
        raise CorruptRecord(f"{key} is unreadable ({exc.error_count()} error(s))", key=key) from None


def parse(model: type[M], key: str, data: bytes) -> M:
    """The stored record at key, or CorruptRecord naming it (never a bare validation error)."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise CorruptRecord(
            f"{key} is unreadable ({exc.error_count()} error(s), first: {exc.errors()[0]['msg']})", key=key
        ) from None


class CheckpointStore:
    """Checkpoints, each storing the agent state in full or as its change from the step before.

    Agent state only grows by appending (messages, sources read), so storing every state in full
    costs O(steps^2) per job. A checkpoint whose previous state is at hand stores only what
    changed (appended list items, added map entries, replaced fields); every SNAPSHOT_EVERY
    steps, and for a job's last step, it stores the state in full. get() rebuilds the exact state
    either way, so resuming from any step is unchanged; retention keeps a job's last snapshot.
    """

    def __init__(self, objects: ObjectStore, *, snapshot_every: int = SNAPSHOT_EVERY) -> None:
        self.objects = objects
        self.snapshot_every = snapshot_every
        self._states: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def commit(self, checkpoint: Checkpoint) -> bool:
        """Create checkpoint n; False when another delivery committed it first (its result wins)."""
        # The state is already JSON-ready (a dict): dump the rest, and the state whole or as its change.
        stored = checkpoint.model_dump(mode="json", exclude={"state"})
        base = self._recall(checkpoint.job_id, checkpoint.step - 1)
        if base is not None and checkpoint.outcome is None and checkpoint.step % self.snapshot_every:
            stored["state"] = {}
            stored["state_delta"] = {"base": checkpoint.step - 1, "changes": state_changes(base, checkpoint.state)}
        else:
            stored["state"] = checkpoint.state
        try:
            self.objects.put_if_absent(
                checkpoint_key(checkpoint.job_id, checkpoint.step), json.dumps(stored, separators=(",", ":")).encode()
            )
        except PreconditionFailed:
            return False
        self._remember(checkpoint.job_id, checkpoint.step, checkpoint.state)
        return True

    def get(self, job_id: str, step: int) -> Checkpoint | None:
        key = checkpoint_key(job_id, step)
        found = self.objects.get(key)
        if found is None:
            return None
        try:
            stored = json.loads(found.data)
        except ValueError as exc:
            raise CorruptRecord(f"{key} is unreadable (not JSON: {exc})", key=key) from None
        delta = stored.pop("state_delta", None)
        if delta is not None:
            base = self._recall(job_id, delta["base"])
            if base is None:
                previous = self.get(job_id, delta["base"])
                if previous is None:
                    raise LookupError(
                        f"checkpoint {step} of job {job_id} needs checkpoint {delta['base']}, which is gone"
                    )
                base = previous.state
            stored["state"] = apply_state_changes(base, delta["changes"])
        try:
            checkpoint = Checkpoint.model_validate(stored)
        except ValidationError as exc:
            raise CorruptRecord(f"{key} is unreadable (first error: {exc.errors()[0]['msg']})", key=key) from None
        self._remember(job_id, step, checkpoint.state)
        return checkpoint

    def is_snapshot(self, job_id: str, step: int) -> bool:
        """Whether checkpoint `step` holds its state in full (False also when it does not exist)."""
        found = self.objects.get(checkpoint_key(job_id, step))
        return found is not None and b'"state_delta"' not in found.data

    def prunable(self, job_id: str) -> list[int]:
        """Steps retention may delete: all before the last snapshot, which with its deltas stays readable."""
        steps = self.steps(job_id)
        for n in reversed(steps):
            if self.is_snapshot(job_id, n):
                return [m for m in steps if m < n]
        return []

    def steps(self, job_id: str) -> list[int]:
        keys = self.objects.list(f"{layout.CHECKPOINTS.name}/{job_id}/")
        return [int(k.rsplit("/", 1)[1].split(".")[0]) for k in keys]

    def all(self, job_id: str) -> list[Checkpoint]:
        return [cp for n in self.steps(job_id) if (cp := self.get(job_id, n)) is not None]

    def delete(self, job_id: str, step: int) -> bool:
        with self._lock:
            self._states.pop((job_id, step), None)
        return self.objects.delete(checkpoint_key(job_id, step))

    def _recall(self, job_id: str, step: int) -> dict[str, Any] | None:
        with self._lock:
            return self._states.get((job_id, step))

    def _remember(self, job_id: str, step: int, state: dict[str, Any]) -> None:
        with self._lock:
            self._states[(job_id, step)] = state
            self._states.move_to_end((job_id, step))
            while len(self._states) > _STATES_KEPT:
                self._states.popitem(last=False)


def state_changes(base: dict[str, Any], state: dict[str, Any]) -> dict[str, list[Any]]:
    """What turns base into state, field by field: ["extend", items], ["update", entries], ["set", value]."""
    changes: dict[str, list[Any]] = {}
    for name, value in state.items():
        if name not in base:
            changes[name] = ["set", value]
            continue
        old = base[name]
        if isinstance(value, list) and isinstance(old, list) and value[: len(old)] == old:
            if len(value) > len(old):
                changes[name] = ["extend", value[len(old) :]]
        elif (
            isinstance(value, dict)
            and isinstance(old, dict)
            and all(k in value and value[k] == v for k, v in old.items())
        ):
            if len(value) > len(old):
                changes[name] = ["update", {k: v for k, v in value.items() if k not in old}]
        elif value != old:
            changes[name] = ["set", value]
    for name in base:
        if name not in state:
            changes[name] = ["drop", None]
    return changes


def apply_state_changes(base: dict[str, Any], changes: dict[str, list[Any]]) -> dict[str, Any]:
    """base with changes applied, as a new dict (base itself is left as it was)."""
    state = dict(base)
    for name, (how, value) in changes.items():
        if how == "extend":
            state[name] = [*state[name], *value]
        elif how == "update":
            state[name] = {**state[name], **value}
        elif how == "drop":
            state.pop(name, None)
        else:
            state[name] = value
    return state


class JobStore:
    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    @staticmethod
    def _key(job_id: str) -> str:
        return layout.job_key(job_id)

    @staticmethod
    def _tenant_marker(job: Job) -> str:
        inverted = _MAX_TS - int(job.created_at.timestamp() * 1000)
        return f"{layout.tenant_jobs_prefix(job.tenant)}{inverted:013d}_{job.id}"

    def marker_key(self, job: Job) -> str:
        """The key of the job's entry in its tenant's listing (retention deletes it with the record)."""
        return self._tenant_marker(job)

    def delete(self, job_id: str) -> bool:
        """Delete the record (retention only, after everything that hangs off it); False if it was gone."""
        return self.objects.delete(self._key(job_id))

    def create(self, job: Job) -> None:
        # The listing marker first, then the record, in one commit where the store has one (a submit
        # waits for one fsync, not two rounds); a marker whose record never came is skipped by listings.
        marker = self._tenant_marker(job)
        try:
            record = ObjectWrite(self._key(job.id), job.model_dump_json().encode(), if_absent=True)
            self.objects.put_many([ObjectWrite(marker, b""), record])
        except PreconditionFailed:
            # A concurrent create of the same id (two submitters of one Idempotency-Key) won. Its
            # record was made a millisecond apart, so its marker may be another key: ours goes.
            winner = self.get(job.id)
            if winner is not None and self._tenant_marker(winner) != marker:
                self.objects.delete(marker)
            raise

    def forget_tenant_marker(self, job: Job) -> None:
        """Remove the job from its tenant's listing (a submission rolled back before it ran)."""
        self.objects.delete(self._tenant_marker(job))

    def get(self, job_id: str) -> Job | None:
        """The record with its whole progress (the pages it has moved past read back in)."""
        found = self.objects.get(self._key(job_id))
        return self.whole(parse(Job, self._key(job_id), found.data)) if found else None

    def whole(self, job: Job) -> Job:
        """job with the progress of its sealed pages in front of its own (no read for a short job)."""
        pages = _sealed_pages(job)
        if not pages:
            return job
        earlier: list[StepSummary] = []
        for page in range(pages):
            key = layout.progress_key(job.id, page)
            found = self.objects.get(key)
            if found is not None:  # a page whose every step was missed by the record was never written
                earlier.extend(parse_page(key, found.data))
        return job.model_copy(update={"progress": earlier + job.progress})

    def seal_pages(self, job: Job) -> int:
        """Write each full page of job's progress the record still holds; the last step they cover (0: none).

        A page is written from the stored record's own lines, which never change once appended, so
        a redelivery or a racing writer writes the same bytes; the projection drops the lines after
        (lifecycle.apply_checkpoint's paged_through), so a crash in between only repeats the write.
        Without an fsync: the record's later write (or the next step's) carries it to disk first.
        """
        through = job.step // PROGRESS_PAGE_STEPS * PROGRESS_PAGE_STEPS
        for page in range(_sealed_pages(job), through // PROGRESS_PAGE_STEPS):
            lo, hi = page * PROGRESS_PAGE_STEPS, (page + 1) * PROGRESS_PAGE_STEPS
            lines = [p for p in job.progress if lo < p.step <= hi]
            if lines:
                self.objects.put(layout.progress_key(job.id, page), _PAGE.dump_json(lines), durable=False)
        return through

    def delete_pages(self, job_id: str) -> None:
        """Retention only, before the record."""
        for key in list(self.objects.list(f"{layout.PROGRESS.name}/{job_id}/")):
            self.objects.delete(key)

    def read(self, job_id: str) -> tuple[Job, str] | None:
        """The record as stored (only its open page of progress) and its ETag, for the step engine,
        which updates it later (update(..., current=...)) and never needs the earlier pages.
        """
        found = self.objects.get(self._key(job_id))
        return (parse(Job, self._key(job_id), found.data), found.etag) if found else None

    def outcome(self, job_id: str) -> tuple[str, str | None] | None:
        """(status, error reason) of a job, read without validating the whole record (counts over many jobs)."""
        found = self.objects.get(self._key(job_id))
        if found is None:
            return None
        record = json.loads(found.data)
        error = record.get("error")
        return str(record["status"]), (str(error["reason"]) if isinstance(error, dict) else None)

    def update(
        self,
        job_id: str,
        transition: Callable[[Job], bool],
        *,
        durable: bool = True,
        current: tuple[Job, str] | None = None,
    ) -> Job | None:
        """Apply a transition of shared.engine.job (False: nothing changed, nothing written).

        Returns the record as it now is, or None when there is no such job. durable=False only
        for a projection a later write repairs (see ObjectStore.put). current: the record and ETag
        from read(), tried first instead of reading again; the transition changes that very object.
        """

        def change(job: Job | None) -> Job | None:
            if job is None or not transition(job):
                return None
            return stamped(job)

        written = [False]

        def tracked(job: Job | None) -> Job | None:
            new = change(job)
            written[0] = new is not None
            return new

        key = self._key(job_id)
        result = update_json(
            self.objects,
            key,
            tracked,
            load=lambda data: parse(Job, key, data),
            dump=_dump,
            durable=durable,
            current=current,
        )
        if written[0]:
            watch.notify(job_id)  # the commit path wakes this process's event streams
        return result

    def list_for_tenant(self, tenant: str, *, after: str | None = None) -> Iterator[tuple[str, Job]]:
        """(cursor, job) pairs of the tenant's jobs, newest first, resuming after a cursor."""
        prefix = layout.tenant_jobs_prefix(tenant)
        for key in self.objects.list(prefix):
            marker = key[len(prefix) :]
            if after is not None and marker <= after:
                continue
            job = self._readable(marker.split("_", 1)[1])
            # A marker that is not the record's own is a losing concurrent create's, left by a crash.
            if job is not None and self._tenant_marker(job) == key:
                yield marker, job

    def markers(self, tenant: str | None = None, *, after: str | None = None) -> Iterator[tuple[str, str, datetime]]:
        """(cursor, job_id, created_at) of one tenant's jobs, or every tenant's, newest first; no record is read.

        Cursors from either listing compare alike (an inverted timestamp, then the id), so one
        resumes the other. Every tenant's listing sorts all markers: it lists keys, never records.
        """
        if tenant is not None:
            prefix = layout.tenant_jobs_prefix(tenant)
            markers: Iterable[str] = (key[len(prefix) :] for key in self.objects.list(prefix))
        else:
            root = f"{layout.TENANTS.name}/"
            markers = sorted(k.rsplit("/", 1)[1] for k in self.objects.list(root) if "/jobs/" in k[len(root) :])
        for marker in markers:
            if after is not None and marker <= after:
                continue
            inverted, _, job_id = marker.partition("_")
            yield marker, job_id, datetime.fromtimestamp((_MAX_TS - int(inverted)) / 1000, UTC)

    def all(self) -> Iterator[Job]:
        prefix = f"{layout.JOBS.name}/"
        for key in self.objects.list(prefix):
            job = self._readable(key[len(prefix) : -len(".json")])
            if job is not None:
                yield job

    def _readable(self, job_id: str) -> Job | None:
        """For listings: an unreadable record is logged and skipped, so one bad record hides no others."""
        try:
            return self.get(job_id)
        except CorruptRecord as exc:
            log.error("%s; skipped in listings", exc, extra={"event": "corrupt_record", "job_id": job_id})
            return None

    def unreadable(self) -> Iterator[tuple[str, str]]:
        """(job_id, problem) of every job record that cannot be read."""
        prefix = f"{layout.JOBS.name}/"
        for key in self.objects.list(prefix):
            job_id = key[len(prefix) : -len(".json")]
            try:
                self.get(job_id)
            except CorruptRecord as exc:
                yield job_id, str(exc)


class ReportStore:
    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    def save(self, job_id: str, report: Report, *, durable: bool = True) -> None:
        """Same report from any delivery: an unconditional write is idempotent here.

        durable=False: a later durable write of the same store carries it (see ObjectStore.put).
        """
        self.objects.put(layout.report_key(job_id), report.model_dump_json().encode(), durable=durable)

    def get(self, job_id: str) -> Report | None:
        found = self.objects.get(layout.report_key(job_id))
        return parse(Report, layout.report_key(job_id), found.data) if found else None
