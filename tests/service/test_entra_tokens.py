"""Entra ID bearer tokens, verified against a JWKS served on loopback with a locally generated RSA key pair."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from jwt.algorithms import RSAAlgorithm

from shared.engine.backends import Backends

ISSUER = "https://login.example.test/11111111-2222-3333-4444-555555555555/v2.0"
AUDIENCE = "api://agent-framework"
DIRECTORY = "11111111-2222-3333-4444-555555555555"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


SIGNING, STRANGER = _key(), _key()


class _Jwks(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        jwk = json.loads(RSAAlgorithm.to_jwk(SIGNING.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _serve() -> ThreadingHTTPServer:
    for port in range(18200, 18300):  # this suite's loopback ports
        try:
            return ThreadingHTTPServer(("127.0.0.1", port), _Jwks)
        except OSError:
            continue
    raise RuntimeError("no free loopback port in 18200-18299 for the JWKS server")


@pytest.fixture
def jwks_url() -> Iterator[str]:
    server = _serve()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/discovery/v2.0/keys"
    server.shutdown()
    server.server_close()


@pytest.fixture
def entra(app_env: dict[str, str], jwks_url: str) -> None:
    app_env.update(
        ENTRA_ISSUER=ISSUER,
        ENTRA_AUDIENCE=AUDIENCE,
        ENTRA_JWKS_URL=jwks_url,
        ENTRA_TENANTS=json.dumps({DIRECTORY: "acme"}),
    )


@pytest.fixture
def client(entra: None, backends: Backends) -> Iterator[TestClient]:
    from shared.api.app import create_api

    with TestClient(create_api(backends)) as c:
        yield c


def token(key: rsa.RSAPrivateKey = SIGNING, kid: str = "k1", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "tid": DIRECTORY, "oid": "user-1", "roles": ["submitter"]}
    body.update({"iat": now, "nbf": now, "exp": now + 600})
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm="RS256", headers={"kid": kid})


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def test_a_valid_token_acts_for_its_mapped_tenant_with_its_role(client: TestClient) -> None:
    submitted = client.post("/api/jobs", json={"task": "What is a checkpoint?"}, headers=bearer(token()))
    assert submitted.status_code == 202 and submitted.json()["tenant"] == "acme"
    assert client.get("/api/admin/jobs", headers=bearer(token())).status_code == 403  # submitter
    operator = token(roles=["submitter", "operator"])  # the highest of the roles it carries
    listed = client.get("/api/admin/jobs", headers=bearer(operator))
    assert listed.status_code == 200 and {j["tenant"] for j in listed.json()["jobs"]} == {"acme"}
    assert client.get("/api/admin/jobs?tenant=globex", headers=bearer(operator)).status_code == 403


@pytest.mark.parametrize(
    "claims, why",
    [
        ({"exp": int(time.time()) - 60}, "expired"),
        ({"aud": "api://someone-else"}, "another audience"),
        ({"iss": "https://login.example.test/other/v2.0"}, "another issuer"),
        ({"tid": "99999999-0000-0000-0000-000000000000"}, "a directory not mapped to a tenant"),
        ({"roles": ["reader"]}, "none of our roles"),
        ({"tid": None}, "no tid claim"),
    ],
)
def test_tokens_this_deployment_does_not_accept_are_401(client: TestClient, claims: dict[str, Any], why: str) -> None:
    assert client.get("/api/jobs", headers=bearer(token(**claims))).status_code == 401, why


def test_a_token_signed_by_another_key_or_unknown_kid_is_401(client: TestClient) -> None:
    assert client.get("/api/jobs", headers=bearer(token(key=STRANGER))).status_code == 401
    assert client.get("/api/jobs", headers=bearer(token(kid="k2"))).status_code == 401
    unsigned = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "tid": DIRECTORY, "roles": ["admin"]}, None, "none")
    assert client.get("/api/jobs", headers=bearer(unsigned)).status_code == 401


def test_api_keys_keep_working_beside_tokens(client: TestClient) -> None:
    assert client.get("/api/jobs", headers={"X-API-Key": "dev-local-key"}).status_code == 200
    assert client.get("/api/jobs", headers=bearer("dev-local-key")).status_code == 200
