"""Hygiene of the HTTP surface: no Host-derived redirects, security headers, offline docs, a quiet health
check, every error documented, and text that cannot be encoded never turning into a 500 or a lost log."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shared.api.headers import API_CSP, host_allowed
from shared.api.problems import PROBLEM_JSON, problem_body
from shared.engine.backends import Backends
from shared.errors import InvalidRequest
from shared.observability.logs import JsonLines
from shared.services import health

# --- no redirect built from the Host header ---------------------------------------------------------


def test_a_trailing_slash_is_a_404_not_a_redirect_to_the_host_header(api: TestClient) -> None:
    for path in ("/api/jobs/abc/", "/api/jobs/", "/console/jobs/"):
        r = api.get(path, follow_redirects=False)
        assert r.status_code == 404 and "location" not in r.headers, (path, r.headers)


def test_a_host_outside_allowed_hosts_is_refused_with_problem_details(api: TestClient) -> None:
    r = api.get("/api/jobs/abc/", headers={"Host": "evil.example"}, follow_redirects=False)
    assert r.status_code == 400 and "location" not in r.headers
    assert r.headers["content-type"] == PROBLEM_JSON and r.json()["type"].endswith("/unknown-host")
    assert r.headers["x-content-type-options"] == "nosniff"  # refused answers carry the headers too


def test_console_root_redirects_to_a_relative_location(api: TestClient) -> None:
    r = api.get("/console", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/console/"


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("localhost:7071", True),
        ("127.0.0.1", True),
        ("[::1]:7071", True),
        ("agent-api-prd.azurewebsites.net", True),
        ("AGENT-API-PRD.azurewebsites.net:443", True),
        ("azurewebsites.net", False),
        ("evil.example", False),
        ("evil.azurewebsites.net.example", False),
        ("", False),
    ],
)
def test_allowed_host_patterns(host: str, allowed: bool) -> None:
    assert host_allowed(host, ["localhost", "127.0.0.1", "[::1]", "*.azurewebsites.net"]) is allowed


def test_a_star_allows_any_host() -> None:
    assert host_allowed("anything.example", ["*"])


# --- security headers ---------------------------------------------------------------------------------


def _standard(r: Any) -> None:
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] in ("no-referrer", "same-origin")  # the console keeps same-origin
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


def test_api_answers_carry_the_security_headers_and_are_not_cached(api: TestClient) -> None:
    for r in (api.get("/api/jobs"), api.get("/api/jobs/nope"), api.post("/api/jobs", json={}), api.get("/api/health")):
        _standard(r)
        assert r.headers["content-security-policy"] == API_CSP
        assert r.headers["cache-control"] == "no-store"
        assert r.headers.get_list("x-frame-options") == ["DENY"]  # added once, never twice
        assert "strict-transport-security" not in r.headers  # plain http on loopback


def test_hsts_when_served_over_https(api: TestClient) -> None:
    with TestClient(api.app, base_url="https://testserver") as secure:
        r = secure.get("/api/health")
    assert r.headers["strict-transport-security"].startswith("max-age=31536000")


def test_the_console_keeps_its_own_policy(api: TestClient) -> None:
    r = api.get("/console/sign-in")
    _standard(r)
    assert r.headers.get_list("content-security-policy") == [r.headers["content-security-policy"]]
    assert "script-src 'self'" in r.headers["content-security-policy"]
    static = api.get("/console/static/console.css")
    assert static.status_code == 200 and static.headers.get("cache-control") != "no-store"


# --- offline documentation ------------------------------------------------------------------------------


@pytest.mark.parametrize("page", ["/api/docs", "/api/redoc"])
def test_docs_pages_load_only_same_origin_assets_that_exist(api: TestClient, page: str) -> None:
    r = api.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    _standard(r)
    html = r.text
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html) + re.findall(r"url: '([^']+)'", html)
    urls += re.findall(r'spec-url="([^"]+)"', html)
    assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    assert "http://" not in html and "https://" not in html, "the page names an outside origin"
    for url in urls:
        asset = api.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000, url
    # The page's one inline script (Swagger UI's bootstrap) is allowed by its hash, and nothing else inline.
    csp = r.headers["content-security-policy"]
    for body in re.findall(r"<script>(.*?)</script>", html, re.S):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp
    assert "'unsafe-inline'" not in csp.split("script-src", 1)[1].split(";", 1)[0]


def test_docs_assets_are_javascript_and_css(api: TestClient) -> None:
    assert api.get("/api/docs/assets/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")
    assert api.get("/api/docs/assets/swagger-ui.css").headers["content-type"].startswith("text/css")
    assert api.get("/api/docs/assets/redoc.standalone.js").status_code == 200


# --- health ----------------------------------------------------------------------------------------------


@pytest.fixture
def health_env(app_env: dict[str, str]) -> None:
    app_env["HEALTH_CACHE_SECONDS"] = "60"


def test_anonymous_health_is_answered_from_one_check_per_period(
    health_env: None, api: TestClient, backends: Backends
) -> None:
    anonymous = TestClient(api.app)
    bodies = [anonymous.get("/api/health").json() for _ in range(20)]
    assert bodies == [{"status": "ok"}] * 20
    cache: health.HealthCache = api.app.state.health_cache
    assert cache.checks == 1  # one blob written, one model ping, for twenty probes
    assert list(backends.objects.list("ops/health/")) == []  # each probe removes its object


def test_a_wrong_or_submitter_key_gets_the_anonymous_answer(
    health_env: None, app_env: dict[str, str], backends: Backends, api: TestClient
) -> None:
    assert TestClient(api.app).get("/api/health", headers={"X-API-Key": "wrong"}).json() == {"status": "ok"}


def test_operators_get_a_fresh_check_with_every_dependency(health_env: None, api: TestClient) -> None:
    cache: health.HealthCache = api.app.state.health_cache
    TestClient(api.app).get("/api/health")
    first = cache.checks
    body = api.get("/api/health").json()
    assert cache.checks == first + 1 and set(body["dependencies"]) == {"queue", "storage", "index", "model"}


def test_concurrent_probes_never_report_a_false_down(api: TestClient, backends: Backends) -> None:
    """With no cache (HEALTH_CACHE_SECONDS=0) every probe checks storage itself, all at once."""
    api.app.state.health_cache = health.HealthCache(0)
    statuses: list[int] = []
    direct: list[str] = []

    def probe(i: int) -> None:
        if i % 2:
            statuses.append(api.get("/api/health").status_code)
        else:
            direct.append(health.check(backends)["dependencies"]["storage"]["status"])

    threads = [threading.Thread(target=probe, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 12 and direct == ["up"] * 12


# --- the OpenAPI document states every error ---------------------------------------------------------------


def test_every_error_answer_is_documented_as_problem_details(api: TestClient) -> None:
    spec = api.get("/api/openapi.json").json()
    assert "ProblemDetails" in spec["components"]["schemas"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # FastAPI's 422 shape, never sent
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            errors = {code: r for code, r in op["responses"].items() if code.isdigit() and int(code) >= 400}
            assert {"400", "503"} <= set(errors), (method, path)
            for code, response in errors.items():
                if path in ("/api/health", "/api/mcp") and code in ("503", "400"):
                    continue  # the health report itself; JSON-RPC's error object
                assert list(response["content"]) == [PROBLEM_JSON], (method, path, code)
            if path != "/api/health":
                assert {"401", "429"} <= set(errors), (method, path)
            if "{" in path:
                assert "404" in errors, (method, path)
            if path.startswith("/api/admin/"):
                assert "403" in errors, (method, path)
    assert "409" in spec["paths"]["/api/jobs/{job_id}/cancel"]["post"]["responses"]
    assert "415" in spec["paths"]["/api/documents"]["post"]["responses"]
    assert "202" in spec["paths"]["/api/documents"]["post"]["responses"]


def test_a_405_names_every_method_of_the_path(api: TestClient) -> None:
    r = api.request("PUT", "/api/jobs")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    assert r.headers["content-type"] == PROBLEM_JSON
    assert api.request("PUT", "/api/admin/dlq/sweep").headers["allow"] == "POST"


# --- text that cannot be encoded ---------------------------------------------------------------------------


def test_a_problem_echoing_a_lone_surrogate_still_renders() -> None:
    body = problem_body(InvalidRequest("tool '\ud800' is not allowed", errors=[{"field": "\udc00", "message": "x"}]))
    text = json.dumps(body, ensure_ascii=False).encode("utf-8").decode()
    assert "\\ud800" in text and "\\udc00" in text


def test_a_log_line_with_a_lone_surrogate_is_written_escaped() -> None:
    record = logging.LogRecord("agent.api", logging.INFO, __file__, 1, "refused %s", ("\ud800",), None)
    record.job_id = "job-\udfff"
    line = JsonLines().format(record)
    line.encode("utf-8")  # would raise if the surrogate were still there
    parsed = json.loads(line)
    assert parsed["message"] == "refused \\ud800" and parsed["job_id"] == "job-\\udfff"
