"""One ObjectStore contract, run against the embedded store and against Blob Storage on Azurite.

The step engine leans on two properties above all: a create-only write has exactly one winner
(the commit point of a step) and an If-Match write never loses an update (the job record).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.azure.blob import AzureObjectStore
from shared.adapters.local.blobs import LocalObjectStore
from shared.errors import DependencyUnavailable
from shared.ports import ObjectStore, ObjectWrite, PreconditionFailed
from shared.settings import Settings
from tests.fixtures.concurrency import run_together


@pytest.fixture(params=["local", "azure"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        local = LocalObjectStore(tmp_path / "objects")
        yield local
        local.close()
    else:
        # Only the azure cases start Azurite, so `-k local` runs without it.
        yield request.getfixturevalue("azure_object_store")


def increment(store: ObjectStore, key: str) -> int:
    """Add one to a counter object with If-Match; return how many conflicts it met."""
    conflicts = 0
    while True:
        current = store.get(key)
        assert current is not None
        try:
            store.put(key, str(int(current.data) + 1).encode(), if_match=current.etag)
            return conflicts
        except PreconditionFailed:
            conflicts += 1


# --- the contract ---------------------------------------------------------------------------------


def test_conforms_to_the_port(store: ObjectStore) -> None:
    assert isinstance(store, ObjectStore)
    store.ping()


def test_get_missing_is_none(store: ObjectStore) -> None:
    assert store.get("checkpoints/j_missing/000001.json") is None
    assert store.exists("checkpoints/j_missing/000001.json") is False  # type: ignore[attr-defined]


def test_put_if_absent_is_create_only(store: ObjectStore) -> None:
    key = "checkpoints/j_1/000001.json"
    etag = store.put_if_absent(key, b'{"step": 1}')

    with pytest.raises(PreconditionFailed):
        store.put_if_absent(key, b'{"step": 1, "duplicate": true}')

    stored = store.get(key)
    assert stored is not None
    assert stored.data == b'{"step": 1}'
    assert stored.etag == etag
    assert isinstance(stored.last_modified, datetime) and stored.last_modified.tzinfo is not None
    assert store.exists(key) is True  # type: ignore[attr-defined]


def test_concurrent_put_if_absent_has_exactly_one_winner(store: ObjectStore) -> None:
    for round_ in range(5):
        key = f"checkpoints/j_race/{round_:06d}.json"
        results = run_together(8, lambda i, key=key: store.put_if_absent(key, f"writer {i}".encode()))

        winners = [i for i, r in enumerate(results) if isinstance(r, str)]
        assert len(winners) == 1, results
        assert all(isinstance(r, PreconditionFailed) for r in results if not isinstance(r, str)), results
        stored = store.get(key)
        assert stored is not None
        assert stored.data == f"writer {winners[0]}".encode()
        assert stored.etag == results[winners[0]]


def test_put_with_if_match(store: ObjectStore) -> None:
    key = "jobs/j_1.json"
    first = store.put(key, b'{"status": "queued"}')
    second = store.put(key, b'{"status": "running"}', if_match=first)
    assert second != first

    with pytest.raises(PreconditionFailed):
        store.put(key, b'{"status": "cancelled"}', if_match=first)  # stale

    stored = store.get(key)
    assert stored is not None
    assert (stored.data, stored.etag) == (b'{"status": "running"}', second)


def test_a_write_without_its_own_fsync_keeps_every_other_guarantee(store: ObjectStore) -> None:
    etag = store.put("jobs/lazy.json", b"v1", durable=False)
    assert store.get("jobs/lazy.json").data == b"v1"  # type: ignore[union-attr]
    newer = store.put("jobs/lazy.json", b"v2", if_match=etag, durable=False)
    with pytest.raises(PreconditionFailed):
        store.put("jobs/lazy.json", b"v3", if_match=etag, durable=False)
    store.put("jobs/other.json", b"durable")  # a durable write after it, on the same store, still works
    assert store.get("jobs/lazy.json").etag == newer  # type: ignore[union-attr]
    with pytest.raises(PreconditionFailed):
        store.delete("jobs/lazy.json", if_match=etag, durable=False)
    assert store.delete("jobs/lazy.json", if_match=newer, durable=False) is True
    assert store.get("jobs/lazy.json") is None
    assert store.delete("jobs/lazy.json", durable=False) is False


def test_put_many_writes_in_order_and_returns_each_etag(store: ObjectStore) -> None:
    writes = [
        ObjectWrite("jobs-by-tenant/acme/0001_job-1", b""),
        ObjectWrite("jobs/job-1.json", b'{"id": "job-1"}', if_absent=True),
        ObjectWrite("jobs/job-1.json.note", "メモ".encode()),
    ]
    etags = store.put_many(writes)
    assert len(etags) == 3 and len(set(etags)) == 3
    for write, etag in zip(writes, etags, strict=True):
        found = store.get(write.key)
        assert found is not None and (found.data, found.etag) == (write.data, etag)
    assert store.put_many([]) == []


def test_put_many_stops_at_a_create_only_key_that_exists(store: ObjectStore) -> None:
    first = store.put_if_absent("jobs/job-2.json", b"first")
    with pytest.raises(PreconditionFailed):
        store.put_many(
            [
                ObjectWrite("jobs-by-tenant/acme/0002_job-2", b""),
                ObjectWrite("jobs/job-2.json", b"second", if_absent=True),
                ObjectWrite("jobs/job-2.after", b"never"),
            ]
        )
    found = store.get("jobs/job-2.json")
    assert found is not None and (found.data, found.etag) == (b"first", first)  # the winner is untouched
    assert store.get("jobs/job-2.after") is None  # nothing after the failed write
    # What came before it may stand (Blob Storage writes one by one): the listing skips such an entry.


def test_concurrent_put_many_of_one_key_has_exactly_one_winner(store: ObjectStore) -> None:
    def attempt(i: int) -> bool:
        try:
            store.put_many(
                [ObjectWrite(f"jobs-by-tenant/acme/{i}", b""), ObjectWrite("jobs/j.json", b"x", if_absent=True)]
            )
        except PreconditionFailed:
            return False
        return True

    assert sum(r is True for r in run_together(6, attempt)) == 1


def test_if_match_on_a_missing_object_fails(store: ObjectStore) -> None:
    store.put("jobs/j_other.json", b"{}")  # the container exists, the blob does not
    with pytest.raises(PreconditionFailed):
        store.put("jobs/j_gone.json", b"{}", if_match="0x8DC0000000000000")
    with pytest.raises(PreconditionFailed):
        store.put("tenants/t_gone.json", b"{}", if_match="0x8DC0000000000000")  # no container either
    assert store.get("jobs/j_gone.json") is None


def test_etag_changes_on_every_write_and_after_recreate(store: ObjectStore) -> None:
    key = "jobs/j_etag.json"
    seen = {store.put(key, b"same"), store.put(key, b"same"), store.put(key, b"same")}
    assert len(seen) == 3

    stale = store.put(key, b"before delete")
    assert store.delete(key) is True
    recreated = store.put_if_absent(key, b"before delete")
    assert recreated not in seen | {stale}
    with pytest.raises(PreconditionFailed):
        store.put(key, b"stale writer", if_match=stale)


def test_concurrent_if_match_increments_lose_no_update(store: ObjectStore) -> None:
    key = "ledgers/t_1/counter"
    store.put_if_absent(key, b"0")
    threads, per_thread = 5, 10

    results = run_together(threads, lambda _: sum(increment(store, key) for _ in range(per_thread)))

    assert all(isinstance(r, int) for r in results), results
    stored = store.get(key)
    assert stored is not None
    assert int(stored.data) == threads * per_thread


def test_list_is_sorted_and_scoped_by_prefix(store: ObjectStore) -> None:
    keys = [
        "checkpoints/j_2/000010.json",
        "checkpoints/j_2/000001.json",
        "checkpoints/j_20/000001.json",
        "checkpoints/j_2/000002.json",
        "checkpoints/j_1/000001.json",
        "jobs/j_2.json",
        "reports/j_2/report.md",
        "memory/t_1/a",
        "memory-archive/t_1/a",
    ]
    for key in keys:
        store.put(key, b"x")

    assert list(store.list("checkpoints/j_2/")) == [
        "checkpoints/j_2/000001.json",
        "checkpoints/j_2/000002.json",
        "checkpoints/j_2/000010.json",
    ]
    assert list(store.list("checkpoints/j_2")) == [
        "checkpoints/j_2/000001.json",
        "checkpoints/j_2/000002.json",
        "checkpoints/j_2/000010.json",
        "checkpoints/j_20/000001.json",
    ]
    assert list(store.list("jobs/")) == ["jobs/j_2.json"]
    assert list(store.list("checkpoints/")) == sorted(k for k in keys if k.startswith("checkpoints/"))
    # A prefix without "/" spans containers, still in key order ('-' sorts before '/').
    assert list(store.list("memory")) == ["memory-archive/t_1/a", "memory/t_1/a"]
    assert list(store.list("")) == sorted(keys)
    assert list(store.list("checkpoints/j_3/")) == []


def test_delete(store: ObjectStore) -> None:
    key = "reports/j_1/report.md"
    etag = store.put(key, b"# report")

    with pytest.raises(PreconditionFailed):
        store.delete(key, if_match="not-the-etag")
    assert store.get(key) is not None

    assert store.delete(key, if_match=etag) is True
    assert store.get(key) is None
    assert store.delete(key) is False
    assert store.delete(key, if_match=etag) is False

    store.put(key, b"# again")
    assert store.delete(key) is True
    assert list(store.list("reports/")) == []


def test_binary_and_japanese_round_trip(store: ObjectStore) -> None:
    binary = bytes(range(256)) * 64 + b"\x00\xff\x00"
    japanese = "運用手順書：バックアップは毎日 03:00 に取得する。".encode()
    cases = {
        "backups/2024-01-01/index.bin": binary,
        "reports/j_1/報告書.md": japanese,
        "memory/t_1/empty": b"",
    }
    for key, data in cases.items():
        store.put_if_absent(key, data)

    for key, data in cases.items():
        stored = store.get(key)
        assert stored is not None and stored.data == data, key
    assert list(store.list("reports/j_1/")) == ["reports/j_1/報告書.md"]


def test_missing_container_reads_as_empty(store: ObjectStore) -> None:
    assert list(store.list("ops/")) == []
    assert list(store.list("ops/weekly/")) == []
    assert store.get("ops/weekly/report.json") is None
    assert store.delete("ops/weekly/report.json") is False
    assert store.delete("ops/weekly/report.json", if_match="0x1") is False

    # The first write creates the container.
    store.put_if_absent("ops/weekly/report.json", b"{}")
    assert list(store.list("ops/")) == ["ops/weekly/report.json"]


@pytest.mark.parametrize("key", ["no-container", "Jobs/j_1.json", "jobs/", "/jobs/j_1.json", "a/x", "bad--name/x"])
def test_rejects_keys_blob_storage_would_reject(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.put(key, b"x")
    with pytest.raises(ValueError):
        store.put_if_absent(key, b"x")


# --- Azure only: configuration and reachability --------------------------------------------------


def test_azure_unreachable_is_dependency_unavailable() -> None:
    from azure.storage.blob import ExponentialRetry

    from tests.fixtures.azurite import connection_string

    with socket_closed_port() as port:
        store = AzureObjectStore.from_connection_string(
            connection_string(port), retry_policy=ExponentialRetry(retry_total=0)
        )
        with pytest.raises(DependencyUnavailable):
            store.ping()
        with pytest.raises(DependencyUnavailable):
            store.get("jobs/j_1.json")


def test_azure_from_settings() -> None:
    dev = AzureObjectStore.from_settings(Settings(storage_connection="UseDevelopmentStorage=True"))
    assert dev._service.url.startswith("http://127.0.0.1:10000/devstoreaccount1")  # noqa: SLF001
    by_identity = AzureObjectStore.from_settings(
        Settings(storage_connection=None, storage_blob_uri="https://agentstprd.blob.core.windows.net")
    )
    assert by_identity._service.account_name == "agentstprd"  # noqa: SLF001
    with pytest.raises(ValueError, match="AzureWebJobsStorage"):
        AzureObjectStore.from_settings(Settings(storage_connection=None, storage_blob_uri=None))


class socket_closed_port:  # noqa: N801 - reads as a context manager
    """A loopback port nothing listens on (bound, never listened, so connects are refused)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        return int(self._sock.getsockname()[1])

    def __exit__(self, *_: object) -> None:
        self._sock.close()


# --- embedded store only: several processes, and a writer killed mid-write -----------------------

_spawn = multiprocessing.get_context("spawn")


def _patiently(action: Callable[[], Any]) -> Any:
    """Call action, retrying while the store answers DependencyUnavailable: the embedded store waits a
    bounded few hundred ms for SQLite's write lock and then says so, and its callers may retry."""
    for _ in range(200):
        try:
            return action()
        except DependencyUnavailable:
            time.sleep(0.01)
    return action()


def _race_put_if_absent(root: str, writer: int, keys: int, start: Any, wins: Any) -> None:
    store = LocalObjectStore(Path(root))
    start.wait()
    won = []
    for k in range(keys):
        try:
            _patiently(lambda k=k: store.put_if_absent(f"checkpoints/j_race/{k:06d}.json", f"writer {writer}".encode()))
            won.append(k)
        except PreconditionFailed:
            pass
    wins.put((writer, won))


def _count_up(root: str, times: int, start: Any) -> None:
    store = LocalObjectStore(Path(root))
    start.wait()
    for _ in range(times):
        _patiently(lambda: increment(store, "ledgers/t_1/counter"))


def test_local_processes_racing_put_if_absent_have_one_winner_per_key(tmp_path: Path) -> None:
    root, writers, keys = tmp_path / "objects", 4, 200
    LocalObjectStore(root)  # create the schema before the race
    wins = _spawn.Queue()
    start = _spawn.Event()
    procs = [_spawn.Process(target=_race_put_if_absent, args=(str(root), w, keys, start, wins)) for w in range(writers)]
    for proc in procs:
        proc.start()
    start.set()
    won = dict(wins.get(timeout=30) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0

    winner_of: dict[int, int] = {}
    for writer, ks in won.items():
        for k in ks:
            assert k not in winner_of, f"key {k} won by {winner_of[k]} and {writer}"
            winner_of[k] = writer
    assert sorted(winner_of) == list(range(keys))
    store = LocalObjectStore(root)
    for k, writer in winner_of.items():
        stored = store.get(f"checkpoints/j_race/{k:06d}.json")
        assert stored is not None and stored.data == f"writer {writer}".encode()


def test_local_processes_if_match_increments_lose_no_update(tmp_path: Path) -> None:
    root, processes, times = tmp_path / "objects", 4, 50
    LocalObjectStore(root).put_if_absent("ledgers/t_1/counter", b"0")
    start = _spawn.Event()
    procs = [_spawn.Process(target=_count_up, args=(str(root), times, start)) for _ in range(processes)]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0

    stored = LocalObjectStore(root).get("ledgers/t_1/counter")
    assert stored is not None and int(stored.data) == processes * times


def _self_checking(size: int, seed: int) -> bytes:
    body = random.Random(seed).randbytes(size)
    return hashlib.sha256(body).digest() + body


def _intact(data: bytes) -> bool:
    return hashlib.sha256(data[32:]).digest() == data[:32]


def _write_forever(root: str, progress: Any) -> None:
    store = LocalObjectStore(Path(root))
    n = 0
    while True:
        n += 1
        # Large objects make the kill likely to land inside a write.
        data = _self_checking(random.randint(256 * 1024, 2 * 1024 * 1024), n)
        store.put_if_absent(f"checkpoints/j_kill/{n:06d}.json", data)
        store.put("jobs/j_kill.json", data)
        progress.value = n


def test_local_sigkill_mid_write_leaves_no_partial_object(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    LocalObjectStore(root)
    for round_ in range(3):
        progress = _spawn.Value("i", 0)
        writer = _spawn.Process(target=_write_forever, args=(str(root), progress))
        writer.start()
        deadline = time.monotonic() + 30
        while progress.value < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(random.uniform(0, 0.02))
        os.kill(writer.pid, signal.SIGKILL)  # type: ignore[arg-type]
        writer.join(timeout=10)
        assert writer.exitcode == -signal.SIGKILL

        store = LocalObjectStore(root)
        checkpoints = list(store.list("checkpoints/j_kill/"))
        assert len(checkpoints) >= 3
        for key in [*checkpoints, "jobs/j_kill.json"]:
            stored = store.get(key)
            assert stored is not None and _intact(stored.data), key
        # The killed writer held the write lock; it must not outlive the process.
        store.put(f"ops/after-kill-{round_}", b"ok")
        for key in checkpoints:
            store.delete(key)


def _put_from_forked_child(store: LocalObjectStore) -> None:
    store.put_if_absent("checkpoints/j_fork/000002.json", b"child")


def test_local_store_object_keeps_working_across_fork(tmp_path: Path) -> None:
    # A SQLite connection must not be used on both sides of fork(); the store reconnects in the child.
    store = LocalObjectStore(tmp_path / "objects")
    store.put_if_absent("checkpoints/j_fork/000001.json", b"parent")
    child = multiprocessing.get_context("fork").Process(target=_put_from_forked_child, args=(store,))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert list(store.list("checkpoints/j_fork/")) == [
        "checkpoints/j_fork/000001.json",
        "checkpoints/j_fork/000002.json",
    ]
    store.put("jobs/j_fork.json", b"parent still writes")


def _counting_commits(tmp_path: Path) -> tuple[LocalObjectStore, list[int]]:
    """A local store that records the size of each group commit it runs."""
    store = LocalObjectStore(tmp_path / "objects")
    batches: list[int] = []
    commit = store._commit

    def counted(batch: Any) -> None:
        batches.append(len(batch))
        commit(batch)

    store._commit = counted  # type: ignore[method-assign]
    return store, batches


def test_local_concurrent_writers_share_commits_and_each_gets_its_own_result(tmp_path: Path) -> None:
    """Group commit: writes arriving while a commit runs go together in the next one (one fsync)."""
    store, batches = _counting_commits(tmp_path)
    contested = run_together(8, lambda i: [_won(store, f"jobs/race-{n}") for n in range(20)])
    mine = run_together(8, lambda i: [store.put_if_absent(f"jobs/own-{i}-{n}", b"x") for n in range(20)])
    assert all(not isinstance(r, BaseException) for r in [*contested, *mine]), [*contested, *mine]
    assert [sum(won) for won in zip(*contested, strict=True)] == [1] * 20  # one winner per contested key
    assert sum(1 for _ in store.list("jobs/own-")) == 160
    assert sum(batches) == 320 and max(batches) > 1  # fewer commits than writes


def test_local_a_failing_statement_in_a_group_commit_fails_only_its_writer(tmp_path: Path) -> None:
    from shared.adapters.local.blobs import _Write

    store = LocalObjectStore(tmp_path / "objects")
    insert = "INSERT INTO objects (key, data, etag, modified) VALUES (?, ?, ?, ?)"
    good = _Write(True, insert, ("jobs/good", b"x", "e1", 0.0))
    bad = _Write(True, insert, ("jobs/bad", None, "e2", 0.0))
    store._commit([good, bad])
    assert (good.error, good.rowcount) == (None, 1)
    assert isinstance(bad.error, Exception) and "NOT NULL" in str(bad.error)
    assert store.exists("jobs/good") and not store.exists("jobs/bad")


def test_local_put_many_is_one_commit_and_a_failing_one_in_a_group_fails_alone(tmp_path: Path) -> None:
    from shared.adapters.local.blobs import _Write

    store, batches = _counting_commits(tmp_path)
    store.put_many([ObjectWrite(f"jobs/many-{n}", b"x") for n in range(5)])
    assert batches == [1]  # five writes, one commit

    insert = "INSERT INTO objects (key, data, etag, modified) VALUES (?, ?, ?, ?)"
    good = _Write(True, insert, ("jobs/good", b"x", "e1", 0.0))
    bad = _Write(True, insert, ("jobs/bad-1", b"x", "e2", 0.0), (insert, ("jobs/bad-2", None, "e3", 0.0)))
    store._commit([good, bad])
    assert (good.error, good.rowcount) == (None, 1)
    assert isinstance(bad.error, Exception) and "NOT NULL" in str(bad.error)
    # The failing writer's statements are undone together; the other writer's commit stands.
    assert store.exists("jobs/good") and not store.exists("jobs/bad-1") and not store.exists("jobs/bad-2")


def _won(store: ObjectStore, key: str) -> bool:
    try:
        store.put_if_absent(key, b"x")
    except PreconditionFailed:
        return False
    return True


def test_local_commits_switch_fsync_mode_only_when_it_changes_and_a_durable_one_always_fsyncs(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    seen: list[str] = []
    store._conn().set_trace_callback(lambda sql: seen.append(sql) if sql.startswith("PRAGMA synchronous=") else None)

    def mode() -> int:
        return int(store._conn().execute("PRAGMA synchronous").fetchone()[0])

    store.put("jobs/a.json", b"1", durable=False)
    store.put("jobs/b.json", b"1", durable=False)
    assert seen == ["PRAGMA synchronous=NORMAL"]  # once for the two commits without an fsync
    store.put_if_absent("checkpoints/j/000001.json", b"{}")
    assert seen[-1] == "PRAGMA synchronous=FULL" and mode() == 2  # FULL: this commit fsyncs
    store.put("jobs/c.json", b"1")
    assert len(seen) == 2  # already FULL, no switch
