"""Repositories over the ObjectStore port: checkpoints, job records, reports.

Layout (one container per kind, as in Blob Storage):
  checkpoints/{job_id}/{n:06d}.json   immutable, create-only: the commit point of step n
  jobs/{job_id}.json                  the job record, a projection, updated with If-Match
  tenants/{tenant}/jobs/{newest-first key}   empty markers: a tenant's jobs, newest first
  reports/{job_id}.json               the accepted (or kept-for-inspection) report
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from shared.contracts import Checkpoint, Job, Report
from shared.engine import layout, watch
from shared.engine.job import stamped
from shared.engine.layout import checkpoint_key
from shared.engine.updates import update_json
from shared.ports import ObjectStore, PreconditionFailed

_MAX_TS = 10**13  # milliseconds; inverted so lexicographic listing is newest first


def _dump(job: Job) -> bytes:
    return job.model_dump_json().encode()


class CheckpointStore:
    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    def commit(self, checkpoint: Checkpoint) -> bool:
        """Create checkpoint n; False when another delivery committed it first (its result wins)."""
        try:
            self.objects.put_if_absent(
                checkpoint_key(checkpoint.job_id, checkpoint.step), checkpoint.model_dump_json().encode()
            )
            return True
        except PreconditionFailed:
            return False

    def get(self, job_id: str, step: int) -> Checkpoint | None:
        found = self.objects.get(checkpoint_key(job_id, step))
        return Checkpoint.model_validate_json(found.data) if found else None

    def steps(self, job_id: str) -> list[int]:
        keys = self.objects.list(f"{layout.CHECKPOINTS.name}/{job_id}/")
        return [int(k.rsplit("/", 1)[1].split(".")[0]) for k in keys]

    def all(self, job_id: str) -> list[Checkpoint]:
        return [cp for n in self.steps(job_id) if (cp := self.get(job_id, n)) is not None]

    def delete(self, job_id: str, step: int) -> bool:
        return self.objects.delete(checkpoint_key(job_id, step))


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

    def create(self, job: Job) -> None:
        self.objects.put_if_absent(self._key(job.id), job.model_dump_json().encode())
        self.objects.put(self._tenant_marker(job), b"")

    def get(self, job_id: str) -> Job | None:
        found = self.objects.get(self._key(job_id))
        return Job.model_validate_json(found.data) if found else None

    def update(self, job_id: str, transition: Callable[[Job], bool], *, durable: bool = True) -> Job | None:
        """Apply a transition of shared.engine.job (False: nothing changed, nothing written).

        Returns the record as it now is, or None when there is no such job. durable=False only
        for a projection a later write repairs (see ObjectStore.put).
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

        result = update_json(
            self.objects, self._key(job_id), tracked, load=Job.model_validate_json, dump=_dump, durable=durable
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
            job = self.get(marker.split("_", 1)[1])
            if job is not None:
                yield marker, job

    def all(self) -> Iterator[Job]:
        prefix = f"{layout.JOBS.name}/"
        for key in self.objects.list(prefix):
            job = self.get(key[len(prefix) : -len(".json")])
            if job is not None:
                yield job


class ReportStore:
    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    def save(self, job_id: str, report: Report) -> None:
        # Same report from any delivery: an unconditional write is idempotent here.
        self.objects.put(layout.report_key(job_id), report.model_dump_json().encode())

    def get(self, job_id: str) -> Report | None:
        found = self.objects.get(layout.report_key(job_id))
        return Report.model_validate_json(found.data) if found else None
