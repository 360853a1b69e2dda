"""Telemetry, configured once per process: Azure Monitor when a connection string is set, JSON lines otherwise.

With APPLICATIONINSIGHTS_CONNECTION_STRING set, the Azure Monitor distro owns the global OpenTelemetry
providers:
- records of the "agent" logger tree become `traces`, their attributes `customDimensions`, so the
  runbook's `traces | where customDimensions.job_id != ""` finds every log line of a job;
- the meters of shared/metrics.py (agent.tokens and the rest) become `customMetrics`: their
  instruments are created on the global proxy meter, which forwards to the distro's MeterProvider
  once it is set, whichever is imported first;
- Azure SDK and HTTP client calls (Blob, Service Bus, AI Search, the model endpoint) become `dependencies`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from shared.observability.logs import add_job_dimensions, configure_json_logging
from shared.settings import Settings, get_settings

AGENT_LOGGER = "agent"
"""The distro's handler sits on this logger only: the exporter's and Azure SDK's own INFO logs stay out
of Application Insights, and the exporter cannot feed on its own records."""

# FastAPI: the Functions host already records every HTTP invocation as a request, and RequestMetrics
# meters each route, so server spans would count each request twice. The others are frameworks this
# app does not use; naming them keeps an unrelated install from adding telemetry.
_INSTRUMENTATION_OPTIONS: dict[str, dict[str, bool]] = {
    name: {"enabled": False} for name in ("fastapi", "django", "flask", "psycopg2")
}

_lock = threading.Lock()
log = logging.getLogger("agent.telemetry")


def configure_telemetry(
    settings: Settings | None = None, log_file: Path | None = None, *, offline_storage: bool = True
) -> None:
    """Set up logs and metrics for this process; safe to call again (later calls change nothing).

    log_file: also write JSON lines there (the embedded runtime's `logs` command reads it).
    offline_storage: let the exporter keep failed batches on local disk and retry them; tests turn it off.
    """
    settings = settings or get_settings()
    with _lock:
        logging.getLogger(AGENT_LOGGER).setLevel(settings.log_level)
        problem = None
        exporting = False
        if settings.appinsights_connection_string:
            exporting, problem = _azure_monitor(settings.appinsights_connection_string, offline_storage)
        if not exporting or log_file is not None:
            configure_json_logging(
                settings.log_level,
                log_file,
                max_bytes=settings.runtime_log_max_bytes,
                backups=settings.runtime_log_backups,
            )
        # Every handler that can see our records gets the job's dimensions: the distro's (on "agent"),
        # ours on the root, and one the Functions worker installs on the root when it runs the distro itself.
        for name in (AGENT_LOGGER, ""):
            for handler in logging.getLogger(name).handlers:
                add_job_dimensions(handler)
    if problem:
        log.error(problem, extra={"event": "telemetry_not_exported"})


def _azure_monitor(connection_string: str, offline_storage: bool) -> tuple[bool, str | None]:
    """Configure the distro unless this process already has SDK providers: (exporting, problem)."""
    from opentelemetry import metrics
    from opentelemetry._logs import get_logger_provider
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk.metrics import MeterProvider

    # The module-level lock does not survive a second import of this module, and the Functions Python
    # worker runs the distro itself when PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY is true. The global
    # providers do survive, so they are the mark: a second configure_azure_monitor would start a second set
    # of exporters, performance counters and live metrics, and its MeterProvider would be refused anyway.
    if isinstance(get_logger_provider(), LoggerProvider) or isinstance(metrics.get_meter_provider(), MeterProvider):
        return True, None

    from azure.monitor.opentelemetry import configure_azure_monitor

    try:
        configure_azure_monitor(
            connection_string=connection_string,
            logger_name=AGENT_LOGGER,
            instrumentation_options=_INSTRUMENTATION_OPTIONS,
            disable_offline_storage=not offline_storage,
        )
    except ValueError as exc:  # the exporter's verdict on a malformed connection string
        return False, (
            f"APPLICATIONINSIGHTS_CONNECTION_STRING is not usable ({exc}); logs go to stdout only. "
            "Copy the connection string from the Application Insights resource's Overview page into app settings."
        )
    return True, None
