"""No 5xx for any input: every string a request can carry, filled with what breaks naive code.

Walks the served OpenAPI document: every string field of every JSON request body (POST/PUT/PATCH),
every string query parameter and every string path parameter gets lone surrogates (sent as JSON or
percent escapes), NUL, and 1 MB strings. Every answer must be below 500, and every error answer
problem details. A request model without a valid baseline here fails the test: a new model cannot
be added without being fuzzed.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from shared.bootstrap import build_backends, serving
from shared.settings import DEV_API_KEY
from tests.fixtures.app import isolated_settings

# A valid body per request model: the fuzzed field is swapped into it, so validation reaches that field.
BASELINES: dict[str, dict[str, Any]] = {
    "JobRequest": {"task": "What is a checkpoint?"},
    "ScheduleRequest": {"cron": "0 0 9 * * 1", "task": "What changed this week?"},
    "Decision": {"comment": "ok"},
    "RestoreRequest": {"backup_id": "no-such-backup"},
    "KeyRequest": {"tenant": "acme", "role": "submitter", "expires_in": "30d", "note": "fuzz"},
    "Document": {"id": "fuzz-doc", "title": "Fuzz", "content": "Some text."},
}
ONE_MB = 1_000_000
# JSON text of the bad values: json.dumps escapes lone surrogates and NUL as \\uXXXX, as a client would.
BAD_STRINGS: dict[str, str] = {
    "high surrogate": "\ud800",
    "low surrogate": "\udfff",
    "surrogate inside text": "a\udc00b",
    "reversed pair": "\udc00\ud800",
    "NUL": "\x00",
    "NUL inside text": "a\x00b",
    "1 MB ASCII": "x" * ONE_MB,
    "1 MB multibyte": "\u3042" * (ONE_MB // 3),
}
BAD_QUERY_VALUES: dict[str, str] = {
    "surrogate bytes": "%ED%A0%80",  # what a lone surrogate would be in UTF-8: invalid bytes
    "lone surrogate escape": quote("\\ud800"),
    "NUL": "%00",
    "NUL inside text": "a%00b",
    "invalid UTF-8": "%FF%FE",
    # A URL cannot carry 1 MB: HTTP servers refuse request lines past some KB before the app sees them,
    # and the test client refuses URLs over 64 KiB. The longest it sends, then.
    "60 KB": "x" * 60_000,
}


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _model_name(schema: dict[str, Any]) -> str | None:
    for option in [schema, *schema.get("anyOf", []), *schema.get("oneOf", [])]:
        if "$ref" in option:
            return str(option["$ref"]).rsplit("/", 1)[-1]
    return None


def field_paths(
    spec: dict[str, Any], schema: dict[str, Any], kind: str = "string", seen: frozenset[str] = frozenset()
) -> Iterator[list]:
    """Paths (keys and 0 for array items) to every value of this JSON type (string: enums too) a body may hold."""
    name = schema.get("$ref")
    if name in seen:
        return
    schema = _resolve(spec, schema)
    seen = seen | {name} if name else seen
    if schema.get("type") == kind or (kind == "string" and ("enum" in schema or "const" in schema)):
        yield []
    for option in [*schema.get("anyOf", []), *schema.get("oneOf", [])]:
        yield from field_paths(spec, option, kind, seen)
    for key, sub in schema.get("properties", {}).items():
        for path in field_paths(spec, sub, kind, seen):
            yield [key, *path]
    if "items" in schema:
        for path in field_paths(spec, schema["items"], kind, seen):
            yield [0, *path]


def string_paths(spec: dict[str, Any], schema: dict[str, Any]) -> Iterator[list]:
    return field_paths(spec, schema, "string")


def with_value(body: dict[str, Any], path: list, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(body)
    node: Any = body
    for key, nxt in zip(path, path[1:], strict=False):
        if isinstance(node, list):
            while len(node) <= key:
                node.append({} if isinstance(nxt, str) else [])
            if not isinstance(node[key], dict | list):
                node[key] = {} if isinstance(nxt, str) else []
        elif not isinstance(node.get(key), dict | list):
            node[key] = {} if isinstance(nxt, str) else []
        node = node[key]
    if isinstance(node, list):
        node[:] = [value]
    else:
        node[path[-1]] = value
    return body


def json_bodies(spec: dict[str, Any], kind: str = "string") -> Iterator[tuple[str, str, str, list]]:
    """(method, path, model, field path) for every field of this JSON type of every JSON request body."""
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method not in ("post", "put", "patch"):
                continue
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" not in content:
                continue
            model = _model_name(content["application/json"]["schema"])
            if model is None:
                continue  # a free-form object (the MCP endpoint's JSON-RPC): no fields to fill
            for field in field_paths(spec, {"$ref": f"#/components/schemas/{model}"}, kind):
                if field:
                    yield method, path, model, field


def string_params(spec: dict[str, Any], where: str) -> Iterator[tuple[str, str, str, list[dict[str, Any]]]]:
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            params = [p for p in operation.get("parameters", []) if p["in"] in ("query", "path")]
            for param in params:
                if param["in"] == where and any(True for _ in string_paths(spec, param["schema"])):
                    yield method, path, param["name"], params


def integer_params(spec: dict[str, Any]) -> Iterator[tuple[str, str, str, list[dict[str, Any]]]]:
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            params = [p for p in operation.get("parameters", []) if p["in"] in ("query", "path")]
            for param in params:
                if _resolve(spec, param["schema"]).get("type") in ("integer", "number"):
                    yield method, path, param["name"], params


def _fill(path: str, params: list[dict[str, Any]], override: tuple[str, str] | None) -> str:
    """The URL with a harmless value for every parameter and `override` (name, raw escaped value)."""
    query = []
    for param in params:
        name = param["name"]
        schema = param["schema"]
        value = override[1] if override and override[0] == name else None
        if param["in"] == "path":
            path = path.replace("{" + name + "}", value or ("1" if schema.get("type") == "integer" else "fuzz"))
        elif value is not None:
            query.append(f"{name}={value}")
        elif param.get("required"):
            query.append(f"{name}=checkpoint")
    return path + ("?" + "&".join(query) if query else "")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from shared.api.app import create_api

    # A body limit above 1 MB, so the 1 MB strings reach the validators instead of stopping at 413.
    settings = isolated_settings(
        {
            "DATA_DIR": str(tmp_path_factory.mktemp("fuzz")),
            "MAX_BODY_BYTES": "4000000",
            "RATE_LIMIT_PER_MINUTE": "100000",
        }
    )
    b = build_backends(settings)
    with serving(b), TestClient(create_api(b), headers={"X-API-Key": DEV_API_KEY}, raise_server_exceptions=False) as c:
        yield c
    b.close()


@pytest.fixture(scope="module")
def spec(client: TestClient) -> dict[str, Any]:
    return dict(client.get("/api/openapi.json").json())


def assert_handled(response: Any, case: str) -> None:
    assert response.status_code < 500, f"{case}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json"), case
        assert response.json()["status"] == response.status_code, case


def test_every_json_request_model_has_a_baseline(spec: dict[str, Any]) -> None:
    models = {model for _, _, model, _ in json_bodies(spec)}
    assert models and models <= set(BASELINES), f"add a valid baseline for {sorted(models - set(BASELINES))}"


def test_the_baselines_are_valid(client: TestClient, spec: dict[str, Any]) -> None:
    """Each baseline passes validation, so a 422 in the fuzz cases is the fuzzed field's doing."""
    for method, path, model, _ in {(m, p, mo, "") for m, p, mo, _ in json_bodies(spec)}:
        params = [p for p in spec["paths"][path][method].get("parameters", []) if p["in"] in ("query", "path")]
        r = client.request(method, _fill(path, params, None), json=BASELINES[model])
        assert r.status_code != 422, f"{method} {path}: {r.text}"


def test_string_fields_of_json_bodies(client: TestClient, spec: dict[str, Any]) -> None:
    cases = 0
    for method, path, model, field in json_bodies(spec):
        params = [p for p in spec["paths"][path][method].get("parameters", []) if p["in"] in ("query", "path")]
        url = _fill(path, params, None)
        for label, bad in BAD_STRINGS.items():
            body = json.dumps(with_value(BASELINES[model], field, bad))  # ASCII JSON: \ud800, \u0000 escapes
            r = client.request(method, url, content=body, headers={"Content-Type": "application/json"})
            case = f"{method.upper()} {path} {model}.{'.'.join(map(str, field))} = {label}"
            assert_handled(r, case)
            if "surrogate" in label or "NUL" in label:
                assert r.status_code == 422, case
            cases += 1
    # Every field of every model got every value (the figure the report quotes).
    print(f"\nJSON body fuzz cases: {cases}")
    assert cases >= 8 * 20


def test_integer_fields_of_json_bodies(client: TestClient, spec: dict[str, Any]) -> None:
    cases = 0
    for method, path, model, field in json_bodies(spec, "integer"):
        params = [p for p in spec["paths"][path][method].get("parameters", []) if p["in"] in ("query", "path")]
        for value in (-1, 2**70, -(2**70), 1e308):
            body = json.dumps(with_value(BASELINES[model], field, value))
            r = client.request(
                method, _fill(path, params, None), content=body, headers={"Content-Type": "application/json"}
            )
            assert_handled(r, f"{method.upper()} {path} {model}.{'.'.join(map(str, field))} = {value}")
            cases += 1
    print(f"\nJSON integer fuzz cases: {cases}")
    assert cases >= 4 * 10


@pytest.mark.parametrize("where", ["query", "path"])
def test_string_parameters(client: TestClient, spec: dict[str, Any], where: str) -> None:
    cases = 0
    for method, path, name, params in string_params(spec, where):
        for label, bad in BAD_QUERY_VALUES.items():
            url = _fill(path, params, (name, bad))
            r = client.request(method, url)
            assert_handled(r, f"{method.upper()} {path} {where} {name} = {label}")
            cases += 1
    print(f"\n{where} parameter fuzz cases: {cases}")
    assert cases >= 6 * (8 if where == "query" else 10)


def test_integer_parameters_out_of_every_range(client: TestClient, spec: dict[str, Any]) -> None:
    """Past 64 bits an integer cannot reach SQLite (a chunk number did, as a 500, until bounded)."""
    cases = 0
    for method, path, name, params in integer_params(spec):
        for value in ("-1", str(2**70), "1e400", "NaN"):
            r = client.request(method, _fill(path, params, (name, value)))
            assert_handled(r, f"{method.upper()} {path} {name} = {value}")
            cases += 1
    print(f"\ninteger parameter fuzz cases: {cases}")
    assert cases >= 4 * 8


def test_a_1_mb_string_over_the_body_limit_is_a_413_problem(backends: Any) -> None:
    from shared.api.app import create_api

    with TestClient(create_api(backends), headers={"X-API-Key": DEV_API_KEY}, raise_server_exceptions=False) as c:
        r = c.post(
            "/api/jobs", content=json.dumps({"task": "x" * ONE_MB}), headers={"Content-Type": "application/json"}
        )
    assert_handled(r, "1 MB task at the default body limit")
    assert r.status_code == 413


def test_the_reported_surrogate_case_is_a_422_naming_the_field(client: TestClient) -> None:
    body = '{"task":"q","policy":{"allowed_tools":["\\ud800"]}}'
    r = client.post("/api/jobs", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"][0]["field"] == "policy.allowed_tools.0"
