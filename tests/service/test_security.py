"""Authentication before the body, keys at rest and in rotation, limits that hold across processes,
and the OpenAPI security schemes."""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shared.engine.backends import Backends
from shared.services import keys
from tests.fixtures.cli import agentctl, run_cli

KEYS = {
    "sub-acme": {"tenant": "acme", "role": "submitter"},
    "sub-acme-2": {"tenant": "acme", "role": "submitter"},
    "op-acme": {"tenant": "acme", "role": "operator"},
}
WRONG = {"X-API-Key": "wrong-key"}


@pytest.fixture(autouse=True)
def tenants(app_env: dict[str, str]) -> None:
    app_env["API_KEYS"] = json.dumps(KEYS)


@pytest.fixture
def client(backends: Backends) -> Iterator[TestClient]:
    from shared.api.app import create_api

    with TestClient(create_api(backends)) as c:
        yield c


def kind(response) -> str:  # type: ignore[no-untyped-def]
    return str(response.json()["type"]).rsplit("/", 1)[-1]


# --- authentication before the body ----------------------------------------------------------------------


def test_no_key_and_a_bad_body_is_401_not_422(client: TestClient) -> None:
    bad = {"content": b"{not json", "headers": {"Content-Type": "application/json"}}
    assert client.post("/api/jobs", **bad).status_code == 401
    assert client.post("/api/jobs", **{**bad, "headers": {**bad["headers"], **WRONG}}).status_code == 401
    assert client.post("/api/admin/restore", **bad).status_code == 401
    assert client.post("/api/schedules", json={"cron": 1}).status_code == 401  # valid JSON, invalid fields
    answered = client.post("/api/jobs", **{**bad, "headers": {**bad["headers"], "X-API-Key": "sub-acme"}})
    assert answered.status_code == 422  # with a valid key the body is read, and refused for what it is


def test_anonymous_routes_need_no_key(client: TestClient) -> None:
    assert client.get("/api/health").status_code in (200, 503)
    assert client.get("/api/openapi.json").status_code == 200
    assert client.get("/api/docs").status_code == 200
    assert client.get("/api/no-such-route").status_code == 404  # unknown paths are not a reason to ask for a key


def test_wrong_keys_from_one_address_are_throttled_even_before_the_right_key(backends: Backends) -> None:
    from shared.api.app import create_api

    app = create_api(backends)
    with TestClient(app, client=("192.0.2.7", 5000)) as guesser, TestClient(app, client=("192.0.2.8", 5000)) as other:
        codes = [guesser.get("/api/jobs", headers={"X-API-Key": f"guess-{n}"}).status_code for n in range(100)]
        limit = backends.settings.auth_failures_per_minute
        assert codes[:limit] == [401] * limit and set(codes[limit:]) == {429}
        throttled = guesser.get("/api/jobs", headers={"X-API-Key": "sub-acme"})  # the right key, same address
        assert throttled.status_code == 429 and 1 <= int(throttled.headers["Retry-After"]) <= 60
        assert other.get("/api/jobs", headers={"X-API-Key": "sub-acme"}).status_code == 200  # another address


def test_without_a_client_address_wrong_keys_lock_nobody_out(backends: Backends) -> None:
    """The Functions ASGI adapter passes no client: one shared "unknown" counter would lock every caller out."""
    from starlette.types import Receive, Scope, Send

    from shared.api.app import create_api

    api = create_api(backends)

    async def no_client(scope: Scope, receive: Receive, send: Send) -> None:
        await api({**scope, "client": None}, receive, send)

    with TestClient(no_client) as anyone:  # type: ignore[arg-type]
        codes = {anyone.get("/api/jobs", headers={"X-API-Key": f"guess-{n}"}).status_code for n in range(40)}
        assert codes == {401}
        assert anyone.get("/api/jobs", headers={"X-API-Key": "sub-acme"}).status_code == 200


@pytest.fixture
def tenant_limit(app_env: dict[str, str]) -> None:
    app_env["TENANT_RATE_LIMIT_PER_MINUTE"] = "4"


@pytest.mark.usefixtures("tenant_limit")
def test_a_tenant_limit_counts_every_key_of_the_tenant(client: TestClient) -> None:
    codes = [client.get("/api/jobs", headers={"X-API-Key": k}).status_code for k in ["sub-acme", "sub-acme-2"] * 3]
    assert codes == [200, 200, 200, 200, 429, 429]
    refused = client.get("/api/jobs", headers={"X-API-Key": "op-acme"})
    assert refused.status_code == 429 and "tenant acme" in refused.json()["detail"]


def _hit_many(path: str, hits: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    from limits import RateLimitItemPerMinute
    from limits.strategies import FixedWindowRateLimiter

    from shared.api.limiting import SqliteCounters

    limiter = FixedWindowRateLimiter(SqliteCounters(path=Path(path)))
    out.put(sum(limiter.hit(RateLimitItemPerMinute(100), "key", "shared") for _ in range(hits)))


def test_the_sqlite_counters_are_shared_and_exact_across_processes(tmp_path: Path) -> None:
    """Four processes, 60 hits each, one limit of 100 a minute: exactly 100 are admitted in all."""
    spawn = multiprocessing.get_context("spawn")
    out = spawn.Queue()
    workers = [spawn.Process(target=_hit_many, args=(str(tmp_path / "limits.db"), 60, out)) for _ in range(4)]
    for w in workers:
        w.start()
    admitted = [out.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(30)
    assert sum(admitted) == 100, admitted


def _admit_many(path: str, hits: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    from shared.api.limiting import Limits
    from shared.errors import TooManyRequests
    from shared.settings import Settings

    limits = Limits.from_settings(Settings(DATA_DIR=path, RATE_LIMIT_PER_MINUTE=100))  # type: ignore[call-arg]
    admitted = 0
    for _ in range(hits):
        try:
            limits.admit("acme", "shared")
            admitted += 1
        except TooManyRequests:
            pass
    out.put(admitted)


def test_limits_counted_in_blocks_never_admit_past_the_limit_across_processes(tmp_path: Path) -> None:
    """Each process reserves hits in blocks that shrink as the window fills: never more than the limit in all,
    and at most what the processes still held unused (at most 100 // 16 each) less."""
    spawn = multiprocessing.get_context("spawn")
    out = spawn.Queue()
    workers = [spawn.Process(target=_admit_many, args=(str(tmp_path), 60, out)) for _ in range(4)]
    for w in workers:
        w.start()
    admitted = [out.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(30)
    assert 100 - 4 * (100 // 16) <= sum(admitted) <= 100, admitted


def test_a_process_admits_from_its_block_in_memory_and_remembers_a_full_window(tmp_path: Path) -> None:
    from shared.api.limiting import Limits, NeedsStorage
    from shared.errors import TooManyRequests
    from shared.settings import Settings

    limits = Limits.from_settings(Settings(DATA_DIR=str(tmp_path), RATE_LIMIT_PER_MINUTE=40))  # type: ignore[call-arg]
    with pytest.raises(NeedsStorage):
        limits.admit("acme", "k1", quick=True)  # nothing reserved yet: the full check must run
    limits.admit("acme", "k1")  # reserves one hit: 39 left in the window, so the next block is 39 // 16 = 2
    limits.admit("acme", "k1")
    limits.admit("acme", "k1", quick=True)  # the block's second hit, from memory
    admitted = 3
    while True:
        try:
            limits.admit("acme", "k1")
            admitted += 1
        except TooManyRequests:
            break
    assert admitted == 40  # one process alone: exact
    with pytest.raises(TooManyRequests) as refused:
        limits.admit("acme", "k1", quick=True)  # the full window is remembered: refused without a round trip
    assert 1 <= int(refused.value.headers["Retry-After"]) <= 60


def test_a_window_starts_again_when_it_expires(tmp_path: Path) -> None:
    from shared.api.limiting import SqliteCounters

    counters = SqliteCounters(path=tmp_path / "limits.db")
    assert [counters.incr("k", 60) for _ in range(3)] == [1, 2, 3]
    assert counters.incr("short", 0) == 1 and counters.get("short") == 0  # an expired window counts nothing
    assert counters.incr("short", 60) == 1  # and the next hit starts a new one
    counters.clear("k")
    assert counters.get("k") == 0


def test_unavailable_counters_admit_requests_and_log_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A full disk or a locked counter file must not refuse every request (health and operators included)."""
    from limits.strategies import FixedWindowRateLimiter

    from shared.api import limiting
    from shared.api.limiting import Limits, SqliteCounters
    from shared.errors import TooManyRequests
    from shared.settings import Settings

    limits = Limits.from_settings(Settings(DATA_DIR=str(tmp_path), RATE_LIMIT_PER_MINUTE=1))
    limiting._last_outage_log[0] = float("-inf")  # another test may have logged an outage within 10 s
    limits.admit("acme", "k1")
    with pytest.raises(TooManyRequests):
        limits.admit("acme", "k1")  # counting works: the second hit in the window is refused
    broken = SqliteCounters(path=tmp_path / "limits.db")
    broken._db().execute("DROP TABLE counters")  # every count now fails as a storage fault does
    limits = Limits(FixedWindowRateLimiter(broken), limits.per_key, limits.per_tenant, limits.failures_per_address)
    with caplog.at_level("WARNING", logger="agent.api"):
        for _ in range(3):
            limits.check_address("10.0.0.1")
            limits.admit("acme", "k1")
            limits.failed("10.0.0.1")
    assert [r.event for r in caplog.records if hasattr(r, "event")].count("limits_unavailable") == 1


# --- keys at rest and in rotation ------------------------------------------------------------------------


def test_issued_keys_are_stored_as_hashes_and_rotate_without_downtime(client: TestClient, backends: Backends) -> None:
    old = keys.issue(backends, "acme", "submitter")
    new = keys.issue(backends, "acme", "submitter")
    assert old.key.startswith("afk_") and old.record.id in old.key
    stored = b"".join(backends.objects.get(k).data for k in backends.objects.list("keys/"))  # type: ignore[union-attr]
    assert old.key.rsplit("_", 1)[1].encode() not in stored and new.key.rsplit("_", 1)[1].encode() not in stored
    for issued in (old, new):  # both active at once: callers move from one to the other
        assert client.get("/api/jobs", headers={"X-API-Key": issued.key}).status_code == 200
    keys.revoke(backends, old.record.id)
    assert client.get("/api/jobs", headers={"X-API-Key": old.key}).status_code == 401
    assert client.get("/api/jobs", headers={"X-API-Key": new.key}).status_code == 200
    assert [k.id for k in keys.list_keys(backends, "acme") if k.revoked_at is None] == [new.record.id]
    assert keys.list_keys(backends, "acme")[0].last_used_at is not None


def test_a_key_revoked_in_this_process_is_refused_at_once_though_its_record_is_cached(
    client: TestClient, backends: Backends
) -> None:
    admin = {"X-API-Key": keys.issue(backends, "platform", "admin").key}
    issued = keys.issue(backends, "acme", "operator")
    assert client.get("/api/admin/jobs", headers={"X-API-Key": issued.key}).status_code == 200
    assert keys.verify_cached(backends, issued.key) == keys.verify(backends, issued.key)  # the record is cached
    assert client.delete(f"/api/admin/keys/{issued.record.id}", headers=admin).status_code == 200
    assert keys.verify_cached(backends, issued.key) is False
    assert client.get("/api/admin/jobs", headers={"X-API-Key": issued.key}).status_code == 401


@pytest.fixture
def short_key_cache(app_env: dict[str, str]) -> None:
    app_env["KEY_CACHE_SECONDS"] = "0.3"


@pytest.mark.usefixtures("short_key_cache")
def test_a_cached_key_record_does_not_outlive_its_time(client: TestClient, backends: Backends) -> None:
    """A record changed behind the cache's back (another process revoked the key) is read again in time."""
    issued = keys.issue(backends, "acme", "submitter")
    assert client.get("/api/jobs", headers={"X-API-Key": issued.key}).status_code == 200
    revoked = issued.record.model_copy(update={"revoked_at": datetime.now(UTC), "last_used_at": datetime.now(UTC)})
    backends.objects.put(f"keys/{revoked.id}.json", revoked.model_dump_json().encode())  # not through keys.revoke
    assert keys.verify(backends, issued.key) is not None  # still the cached record: within its time
    time.sleep(0.35)
    assert keys.verify_cached(backends, issued.key) is False  # expired: the store is asked again
    assert client.get("/api/jobs", headers={"X-API-Key": issued.key}).status_code == 401


def test_a_wrong_secret_an_expired_key_and_a_foreign_format_are_refused(client: TestClient, backends: Backends) -> None:
    issued = keys.issue(backends, "acme", "operator", expires_in=timedelta(days=1))
    forged = issued.key[:-4] + ("AAAA" if not issued.key.endswith("AAAA") else "BBBB")
    assert client.get("/api/jobs", headers={"X-API-Key": forged}).status_code == 401
    assert client.get("/api/admin/jobs", headers={"X-API-Key": issued.key}).status_code == 200  # the role holds
    assert keys.verify(backends, issued.key, now=datetime.now(UTC) + timedelta(days=2)) is None  # past its expiry
    expired = keys.issue(backends, "acme", "submitter", expires_in=timedelta(minutes=1))
    record = expired.record.model_copy(update={"expires_at": datetime.now(UTC) - timedelta(seconds=1)})
    backends.objects.put(f"keys/{record.id}.json", record.model_dump_json().encode())
    assert client.get("/api/jobs", headers={"X-API-Key": expired.key}).status_code == 401
    assert keys.verify(backends, "afk_zz_" + "a" * 43) is None
    assert keys.parse_duration("30d") == timedelta(days=30) and keys.parse_duration("12h") == timedelta(hours=12)
    for bad in ("0d", "30", "d", "1y"):
        with pytest.raises(keys.InvalidRequest):
            keys.parse_duration(bad)


def test_agentctl_keys_create_list_revoke(tmp_path: Path) -> None:
    from shared.api.app import create_api
    from shared.bootstrap import build_backends
    from tests.fixtures.app import isolated_settings

    data = tmp_path / "cli-data"
    created = agentctl("keys", "create", "--tenant", "acme", "--role", "operator", "--expires", "30d", data_dir=data)
    assert created["key"].startswith("afk_") and created["role"] == "operator" and created["expires_at"]
    listed = agentctl("keys", "list", data_dir=data)
    assert created["key"] not in json.dumps(listed)  # the plaintext was shown once, never again
    assert {(k["id"], k["state"], k["source"]) for k in listed} >= {(created["id"], "active", "stored")}
    # Another process's revoke reaches this one's cached record within KEY_CACHE_SECONDS.
    b = build_backends(isolated_settings({"DATA_DIR": str(data), "KEY_CACHE_SECONDS": "0.5"}))
    try:
        with TestClient(create_api(b)) as c:
            assert c.get("/api/admin/jobs", headers={"X-API-Key": created["key"]}).status_code == 200
            agentctl("keys", "revoke", created["id"], data_dir=data)
            time.sleep(0.5)
            assert c.get("/api/admin/jobs", headers={"X-API-Key": created["key"]}).status_code == 401
    finally:
        b.close()
    assert run_cli("keys", "create", "--tenant", "acme", "--role", "boss", data_dir=data).code != 0
    assert run_cli("keys", "revoke", "0123456789abcdef", data_dir=data).code == 2  # not found


# --- OpenAPI -----------------------------------------------------------------------------------------------


def test_openapi_declares_the_security_schemes_and_each_operation_s_requirement(client: TestClient) -> None:
    spec = client.get("/api/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {**schemes["ApiKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["Bearer"]["type"] == "http" and schemes["Bearer"]["scheme"] == "bearer"
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if operation["x-access"]["role"] == "anonymous":
                assert "security" not in operation, (method, path)
            else:
                assert operation["security"] == [{"ApiKey": []}, {"Bearer": []}], (method, path)
    assert spec["paths"]["/api/admin/restore"]["post"]["x-access"]["role"] == "admin"
    assert spec["paths"]["/api/admin/jobs"]["get"]["x-access"] == {
        **spec["paths"]["/api/admin/jobs"]["get"]["x-access"],
        "role": "operator",
        "scope": "tenant",
    }


def test_admins_issue_list_and_revoke_keys_over_http(client: TestClient, backends: Backends) -> None:
    admin = keys.issue(backends, "platform", "admin").key
    as_admin = {"X-API-Key": admin}
    made = client.post(
        "/api/admin/keys", json={"tenant": "acme", "role": "operator", "expires_in": "30d"}, headers=as_admin
    )
    assert made.status_code == 201 and made.json()["key"].startswith("afk_") and made.json()["expires_at"]
    issued = made.json()
    assert client.get("/api/admin/jobs", headers={"X-API-Key": issued["key"]}).status_code == 200
    listed = client.get("/api/admin/keys?tenant=acme", headers=as_admin).json()
    assert [k["id"] for k in listed] == [issued["id"]] and "key" not in listed[0] and "sha256" not in listed[0]
    assert client.delete(f"/api/admin/keys/{issued['id']}", headers=as_admin).json()["revoked_at"]
    assert client.get("/api/admin/jobs", headers={"X-API-Key": issued["key"]}).status_code == 401
    assert client.get("/api/admin/keys", headers={"X-API-Key": "op-acme"}).status_code == 403  # admins only
    bad = client.post("/api/admin/keys", json={"tenant": "acme", "expires_in": "forever"}, headers=as_admin)
    assert bad.status_code == 422
