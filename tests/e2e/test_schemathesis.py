"""schemathesis against the live app: the OpenAPI document is what the API really does.

Starts `python -m shared.runtime` on loopback with an operator key and sample documents, then runs
`st run` on its /api/openapi.json with every check but one, bounded (examples per operation, a
fixed seed, one worker) so the run stays within a couple of minutes on two cores. One worker:
CPython 3.11.7's ast.parse is not safe across threads (hypothesis parses strategy lambdas while
generating; two workers failed once with "AST constructor recursion depth mismatch"). Any 5xx, any
response that breaks its schema, any status or content type the document does not list, a 405
whose Allow header differs from the document, fails the test with schemathesis' own report.

Left out, and why:
- positive_data_acceptance: it expects every schema-valid body to be accepted, but some rules are
  not expressible in JSON Schema (a cron expression's fields, a callback host on the tenant's
  allow-list, a readable PDF); those answers are documented 422s.
- /api/mcp: JSON-RPC over streamable HTTP; its contract is the MCP schema, not OpenAPI's
  (tests/e2e/test_mcp.py drives it with the official client).
- the stateful phase: the document has no links between operations yet.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.settings import DEV_API_KEY
from tests.fixtures.app import RuntimeProcess, ingest_over_http

pytestmark = pytest.mark.slow
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "50"))
SEED = os.environ.get("SCHEMATHESIS_SEED", "20261203")
CHECKS_LEFT_OUT = "positive_data_acceptance"
PATHS_LEFT_OUT = ["/api/mcp"]


def _port_in_range(first: int = 18300, last: int = 18399) -> int:
    for port in range(first, last + 1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}-{last}")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    rt = RuntimeProcess(tmp_path_factory.mktemp("schemathesis"), {"RATE_LIMIT_PER_MINUTE": "1000000"})
    rt.port = _port_in_range()
    rt.url = f"http://127.0.0.1:{rt.port}"
    rt.start()
    try:
        with rt.client() as client:
            ingest_over_http(client)  # searches and chunks then find something
        yield rt
    finally:
        rt.stop()


def test_schemathesis_finds_no_failure(live: RuntimeProcess, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{live.url}/api/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        CHECKS_LEFT_OUT,
        *[arg for path in PATHS_LEFT_OUT for arg in ("--exclude-path", path)],
        "--header",
        f"X-API-Key: {DEV_API_KEY}",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        SEED,
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--no-shrink",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    output = run.stdout + run.stderr
    generated = re.search(r"(\d+) generated", output)
    assert generated, output[-3000:]
    print(f"\nschemathesis: {generated.group(0)} ({MAX_EXAMPLES} max examples per operation, seed {SEED})")
    assert run.returncode == 0, output[-12000:] + "\n--- runtime log ---\n" + live.log()
    assert int(generated.group(1)) >= 500, output[-3000:]
