"""Telemetry, configured once: Azure Monitor when a connection string is set, JSON lines otherwise."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from shared.logs import JobDimensions, configure_json_logging
from shared.settings import Settings, get_settings

_done = False
_lock = threading.Lock()


def configure_telemetry(settings: Settings | None = None, log_file: Path | None = None) -> None:
    global _done
    with _lock:
        if _done:
            return
        _done = True
    settings = settings or get_settings()
    if settings.appinsights_connection_string:
        from azure.monitor.opentelemetry import configure_azure_monitor

        # Record attributes become customDimensions; the filter puts job_id/step/tenant on every record.
        configure_azure_monitor(connection_string=settings.appinsights_connection_string, logger_name="agent")
        for handler in logging.getLogger("agent").handlers:
            handler.addFilter(JobDimensions())
        logging.getLogger("agent").setLevel(settings.log_level)
    else:
        configure_json_logging(settings.log_level, log_file)
