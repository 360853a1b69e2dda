"""Backups of the knowledge index and job state, and restores that verify what they rebuilt."""

from __future__ import annotations

import json

import pytest

from shared.contracts import Document
from shared.engine.backends import Backends
from shared.maintenance import backup
from shared.services import jobs
from shared.services.knowledge import index_documents
from tests.fixtures.app import ingest_samples


def index_snapshot(b: Backends) -> list[str]:
    return [c.model_dump_json() for c in b.index.export(size=100_000)]


@pytest.fixture
def seeded(backends: Backends) -> Backends:
    ingest_samples(backends)
    # JSON keeps U+2028 unescaped: a backup line must not split there.
    index_documents(backends, [Document(id="odd-text", title="Odd\u2028title", content="one\u2028two\u2029three")])
    jobs.submit(backends, "dev", jobs.JobRequest(task="What does the runbook say about backups?"))
    return backends


def test_backup_wipe_restore_gives_back_the_same_documents_and_checksums(seeded: Backends) -> None:
    before = index_snapshot(seeded)
    seen: list[tuple[int, int | None, str]] = []
    manifest = backup.run_backup(seeded, progress=lambda done, total, what: seen.append((done, total, what)))
    assert manifest.chunks == len(before) == seeded.index.count() > 0
    assert manifest.documents == len({json.loads(c)["doc_id"] for c in before})
    assert manifest.objects >= 2  # the job record and its tenant's list entry at least
    assert seen[-1][2] == "objects" and any(what == "chunks" for _, _, what in seen)
    assert [m.id for m in backup.list_backups(seeded)] == [manifest.id]

    seeded.index.reset()
    assert seeded.index.count() == 0
    result = backup.restore(seeded, manifest.id)
    assert result.verified and result.index_sha256 == manifest.index_sha256
    assert (result.chunks, result.documents) == (manifest.chunks, manifest.documents)
    assert index_snapshot(seeded) == before
    assert result.objects_restored == 0 and result.objects_present == manifest.objects  # nothing was missing
    assert seeded.index.search("backup", top=3)  # the rebuilt index answers queries


def test_restore_puts_back_missing_state_but_never_overwrites_newer_state(seeded: Backends) -> None:
    [job] = list(seeded.jobs.all())
    manifest = backup.run_backup(seeded)
    seeded.jobs.update(job.id, lambda j: setattr(j, "status", "cancelled") or True)  # newer than the backup
    seeded.objects.delete(
        f"tenants/{job.tenant}/jobs/"
        + next(k.rsplit("/", 1)[1] for k in seeded.objects.list(f"tenants/{job.tenant}/jobs/"))
    )
    result = backup.restore(seeded, manifest.id)
    assert result.objects_restored == 1
    assert seeded.jobs.get(job.id).status == "cancelled"
    assert [j.id for _, j in seeded.jobs.list_for_tenant(job.tenant)] == [job.id]


def test_a_corrupted_backup_file_makes_restore_fail_and_leaves_the_index_alone(seeded: Backends) -> None:
    manifest = backup.run_backup(seeded)
    key = f"backups/{manifest.id}/index/chunks-00001.jsonl"
    stored = seeded.objects.get(key)
    seeded.objects.put(key, stored.data.replace(b"e", b"E", 1))
    before = index_snapshot(seeded)
    with pytest.raises(backup.RestoreMismatch, match=r"index/chunks-00001\.jsonl is corrupted"):
        backup.restore(seeded, manifest.id)
    assert index_snapshot(seeded) == before

    seeded.objects.delete(key)
    with pytest.raises(backup.RestoreMismatch, match="is missing"):
        backup.restore(seeded, manifest.id)
    with pytest.raises(backup.BackupNotFound):
        backup.restore(seeded, "20000101T000000Z")
    with pytest.raises(backup.BackupNotFound):
        backup.restore(seeded, "../jobs")


def test_a_forged_manifest_count_is_a_mismatch(seeded: Backends) -> None:
    manifest = backup.run_backup(seeded)
    forged = manifest.model_copy(update={"chunks": manifest.chunks + 1})
    seeded.objects.put(f"backups/{manifest.id}/manifest.json", forged.model_dump_json().encode())
    with pytest.raises(backup.RestoreMismatch, match="the manifest says"):
        backup.restore(seeded, manifest.id)


@pytest.fixture
def keep_two(app_env: dict[str, str]) -> None:
    app_env["BACKUPS_TO_KEEP"] = "2"


def test_only_the_newest_backups_are_kept_and_unfinished_ones_are_cleared(keep_two: None, backends: Backends) -> None:
    ingest_samples(backends)
    backends.objects.put("backups/20000101T000000Z/index/chunks-00001.jsonl", b"{}\n")  # a run that died
    made = [backup.run_backup(backends).id for _ in range(3)]
    assert len(set(made)) == 3  # same second: suffixed ids
    assert [m.id for m in backup.list_backups(backends)] == sorted(made, reverse=True)[:2]
    assert not list(backends.objects.list("backups/20000101T000000Z/"))
    assert not list(backends.objects.list(f"backups/{sorted(made)[0]}/"))
