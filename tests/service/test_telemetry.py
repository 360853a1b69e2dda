"""Telemetry for real: the Azure Monitor distro exports to a capture server on loopback.

Application Insights connection strings accept any IngestionEndpoint, so the real exporter posts its
envelopes (JSON, gzip or not) to /v2.1/track here. configure_telemetry sets process-global OpenTelemetry
providers, so each case runs it in a subprocess and the rest of the suite never sees them.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
IKEY = "00000000-0000-0000-0000-000000000000"

# Imports metrics before configuring, as function_app does (through shared.engine.steps): the instruments are
# proxies until the distro sets its MeterProvider. Configures three times, the last through a fresh copy
# of the module, as a Functions worker importing function_app again would.
EXPORTING_SCRIPT = """
import gc, importlib, json, logging
from datetime import timedelta

from opentelemetry import metrics as otel_metrics
from opentelemetry._logs import get_logger_provider
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk._logs import LoggerProvider

from shared.observability import metrics
from shared.contracts import Checkpoint, Usage, utcnow
from shared.observability.logs import job_context
import shared.observability.telemetry

shared.observability.telemetry.configure_telemetry(offline_storage=False)
shared.observability.telemetry.configure_telemetry(offline_storage=False)
importlib.reload(shared.observability.telemetry).configure_telemetry(offline_storage=False)

log = logging.getLogger("agent.steps")
with job_context(job_id="job-x", step=3, tenant="acme"):
    log.info("step ran")
    log.warning("explicit extra wins", extra={"tenant": "other"})
    logging.getLogger("urllib3.connectionpool").warning("library noise")
log.info("outside any job")

cp = Checkpoint(job_id="job-x", step=3, kind="search", summary="s", state={},
                usage=Usage(prompt_tokens=120, completion_tokens=30))
metrics.record_commit("acme", utcnow() - timedelta(seconds=5), cp)

get_logger_provider().force_flush()
otel_metrics.get_meter_provider().force_flush()
print(json.dumps({
    "agent_handlers": [type(h).__name__ for h in logging.getLogger("agent").handlers],
    "fastapi_instrumented": FastAPIInstrumentor().is_instrumented_by_opentelemetry,
    "meter_provider": type(otel_metrics.get_meter_provider()).__module__,
    # A second configure_azure_monitor builds a second pipeline; its providers live on (atexit) unused.
    "logger_providers": sum(isinstance(o, LoggerProvider) for o in gc.get_objects()),
}))
"""

JSON_SCRIPT = """
import logging
from shared.observability.logs import job_context
from shared.observability.telemetry import configure_telemetry

configure_telemetry()
configure_telemetry()
with job_context(job_id="job-x", step=3, tenant="acme"):
    logging.getLogger("agent.steps").info("step ran")
logging.getLogger("agent.steps").info("outside any job")
"""


class _Capture(BaseHTTPRequestHandler):
    envelopes: list[dict[str, Any]]

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip" or body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        if self.path.startswith("/v2.1/track"):
            items = json.loads(body)
            self.server.envelopes.extend(items if isinstance(items, list) else [items])  # type: ignore[attr-defined]
            reply = {"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []}
        else:  # live metrics pings: answer "nobody is watching", so it stays quiet
            reply = {}
        payload = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("x-ms-qps-subscribed", "false")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's signature)
        pass


@pytest.fixture
def ingestion() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    server.envelopes = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k.upper() not in {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"}}
    base = {k: v for k, v in base.items() if not k.startswith(("APPLICATIONINSIGHTS_", "OTEL_"))}
    base.update(PYTHONPATH=str(ROOT), NO_PROXY="127.0.0.1,localhost", LOG_LEVEL="INFO", **env)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=base, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done


def _data(envelopes: list[dict[str, Any]], base_type: str) -> list[dict[str, Any]]:
    return [e["data"]["baseData"] for e in envelopes if e.get("data", {}).get("baseType") == base_type]


def test_job_logs_and_token_metrics_reach_application_insights(ingestion: ThreadingHTTPServer, tmp_path: Path) -> None:
    port = ingestion.server_address[1]
    done = _run(
        EXPORTING_SCRIPT,
        {
            "APPLICATIONINSIGHTS_CONNECTION_STRING": f"InstrumentationKey={IKEY};IngestionEndpoint=http://127.0.0.1:{port}/;LiveEndpoint=http://127.0.0.1:{port}/",
            # Both would call Microsoft endpoints on the internet, which this test has not.
            "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
            "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
            # The exporter's offline storage lives under the temp dir; it must stay unused.
            "TMPDIR": str(tmp_path),
        },
    )
    state = json.loads(done.stdout.strip().splitlines()[-1])
    assert state["agent_handlers"] == ["LoggingHandler"], "configured more than once"
    assert state["logger_providers"] == 1, "configured more than once"
    assert not state["fastapi_instrumented"], "the Functions host already records requests"
    assert state["meter_provider"].startswith("opentelemetry.sdk.metrics")
    envelopes: list[dict[str, Any]] = ingestion.envelopes  # type: ignore[attr-defined]

    messages = {m["message"]: m for m in _data(envelopes, "MessageData")}
    assert [m for m in _data(envelopes, "MessageData") if m["message"] == "step ran"] == [messages["step ran"]]
    props = messages["step ran"]["properties"]
    assert (props["job_id"], props["step"], props["tenant"]) == ("job-x", "3", "acme")
    assert props["logger_name"] == "agent.steps"
    assert messages["explicit extra wins"]["properties"]["tenant"] == "other"
    assert "job_id" not in messages["outside any job"]["properties"]
    assert "library noise" not in messages, "only the agent logger tree is exported"

    tokens = [
        (d["properties"], metric["value"])
        for d in _data(envelopes, "MetricData")
        for metric in d["metrics"]
        if metric["name"] == "agent.tokens"
    ]
    assert ({"tenant": "acme", "kind": "prompt"}, 120) in tokens
    assert ({"tenant": "acme", "kind": "completion"}, 30) in tokens
    assert not list(tmp_path.glob("Microsoft-AzureMonitor-*")), "offline storage was used"


def test_without_connection_string_job_logs_are_json_lines_on_stdout() -> None:
    done = _run(JSON_SCRIPT, {})
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    by_message = {line["message"]: line for line in lines}
    assert [line["message"] for line in lines].count("step ran") == 1
    job_line = by_message["step ran"]
    assert (job_line["job_id"], job_line["step"], job_line["tenant"]) == ("job-x", 3, "acme")
    assert (job_line["level"], job_line["logger"]) == ("INFO", "agent.steps")
    assert "job_id" not in by_message["outside any job"]
