"""The app's meters (OpenTelemetry), recorded through a few record_* calls.

One set of instruments, two exports:
- in Azure, the Azure Monitor distro (configure_azure_monitor) owns the global MeterProvider
  and sends these meters to Application Insights (customMetrics);
- elsewhere (the embedded runtime), a MeterProvider with a Prometheus reader is installed on
  first use, and GET /api/metrics renders it in the Prometheus text format.

Attributes stay low-cardinality on purpose: route templates, not paths; tenant, not job id.
A job's own token figures live in its record and in the usage ledger (`agentctl usage`).
"""

from __future__ import annotations

import threading
import time
from datetime import datetime

from opentelemetry import metrics as otel
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.contracts import Checkpoint
from shared.settings import get_settings

PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_LATEST

# Instruments made before a provider exists are proxies; they start recording once one is set.
_meter = otel.get_meter("agent")
http_requests = _meter.create_counter("agent.http.requests", unit="1", description="HTTP requests by route")
http_failures = _meter.create_counter(
    "agent.http.failures", unit="1", description="HTTP requests answered 5xx or with an unhandled error"
)
http_duration = _meter.create_histogram("agent.http.duration", unit="ms", description="HTTP request latency")
steps = _meter.create_counter("agent.steps", unit="1", description="Committed steps by kind and outcome")
step_failures = _meter.create_counter(
    "agent.step.failures", unit="1", description="Step deliveries that raised (the broker redelivers them)"
)
step_duration = _meter.create_histogram("agent.step.duration", unit="ms", description="Time to run one step")
jobs_finished = _meter.create_counter("agent.jobs", unit="1", description="Finished jobs by status and reason")
job_duration = _meter.create_histogram(
    "agent.job.duration", unit="s", description="Submission to final checkpoint, queue time included"
)
budget_used = _meter.create_histogram(
    "agent.budget.used", unit="%", description="A tenant's month-to-date tokens as a percentage of its monthly budget"
)
stuck_jobs = _meter.create_counter(
    "agent.jobs.stuck",
    unit="1",
    description="Jobs the stuck-job detector found with no message for their next step, by action taken",
)
tokens = _meter.create_counter(
    "agent.tokens", unit="1", description="Model tokens by tenant and kind (prompt|completion)"
)

_registry = CollectorRegistry(auto_describe=True)
_lock = threading.Lock()
_local_provider = False


def azure_monitor_owns_metrics() -> bool:
    """True when the Azure Monitor distro exports the meters (APPLICATIONINSIGHTS_CONNECTION_STRING is set)."""
    return bool(get_settings().appinsights_connection_string)


def ensure_provider() -> None:
    """Install the Prometheus-backed provider once, unless Azure Monitor owns the global provider.

    Lazy, because configure_azure_monitor must be the first to set the global provider in Azure
    (a second set_meter_provider is refused), and it runs when function_app is imported.
    """
    global _local_provider
    if _local_provider or azure_monitor_owns_metrics():
        return
    with _lock:
        if _local_provider:
            return
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider

        if not isinstance(otel.get_meter_provider(), MeterProvider):
            # One meter ("agent") and no resource attributes: target_info and otel_scope_* labels add only noise.
            reader = PrometheusMetricReader(disable_target_info=True, scope_info_enabled=False, registry=_registry)
            otel.set_meter_provider(MeterProvider(metric_readers=[reader]))
        _local_provider = True


def prometheus_text() -> bytes:
    ensure_provider()
    return generate_latest(_registry)


# --- what the service layer records ----------------------------------------------------------------


def record_commit(tenant: str, job_created_at: datetime, cp: Checkpoint) -> None:
    """A step committed by this delivery: count it, its tokens, and the job's end if it ended the job.

    Called only by the delivery whose create-only write won, so redeliveries never count twice.
    """
    ensure_provider()
    outcome = cp.outcome.status if cp.outcome is not None else "continued"
    steps.add(1, {"kind": cp.kind, "outcome": outcome})
    step_duration.record(cp.duration_ms, {"kind": cp.kind})
    if cp.usage.prompt_tokens:
        tokens.add(cp.usage.prompt_tokens, {"tenant": tenant, "kind": "prompt"})
    if cp.usage.completion_tokens:
        tokens.add(cp.usage.completion_tokens, {"tenant": tenant, "kind": "completion"})
    if cp.outcome is not None:
        reason = cp.outcome.error.reason if cp.outcome.error else "none"
        jobs_finished.add(1, {"status": cp.outcome.status, "reason": reason})
        job_duration.record(max((cp.created_at - job_created_at).total_seconds(), 0.0), {"status": cp.outcome.status})


def record_budget(tenant: str, month_total: int, budget: int) -> None:
    """The tenant's month-to-date share of its budget: what the 80% alert compares, exactly."""
    ensure_provider()
    budget_used.record(100.0 * month_total / max(budget, 1), {"tenant": tenant})


def record_stuck_job(action: str) -> None:
    """The detector repaired (re-sent the next step of), failed or cancelled a stuck job."""
    ensure_provider()
    stuck_jobs.add(1, {"action": action})


def record_step_failure(error: BaseException) -> None:
    ensure_provider()
    step_failures.add(1, {"error": type(error).__name__})


class RequestMetrics:
    """ASGI middleware: requests, failures and latency per route template and method."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ensure_provider()
        started = time.perf_counter()
        status = 500  # an exception before the response starts is answered 500 by the server

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            attrs = {"route": route, "method": scope.get("method", ""), "status_code": status}
            http_requests.add(1, attrs)
            if status >= 500:
                http_failures.add(1, {"route": route, "method": attrs["method"]})
            http_duration.record((time.perf_counter() - started) * 1000, {"route": route, "method": attrs["method"]})
