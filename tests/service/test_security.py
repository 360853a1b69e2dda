"""Authentication before the body, keys at rest and in rotation, limits that hold across processes,
and the OpenAPI security schemes."""

from __future__ import annotations

import json
import multiprocessing
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
    b = build_backends(isolated_settings({"DATA_DIR": str(data)}))
    try:
        with TestClient(create_api(b)) as c:
            assert c.get("/api/admin/jobs", headers={"X-API-Key": created["key"]}).status_code == 200
            agentctl("keys", "revoke", created["id"], data_dir=data)
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
