"""What a CLI command works on: the backends the settings describe, with logging set up once."""

from __future__ import annotations

import logging

from shared.bootstrap import get_backends
from shared.engine.backends import Backends
from shared.observability.logs import JobDimensions, rotating_log_file
from shared.settings import Settings


def backends() -> Backends:
    """The backends the settings describe, built once per CLI process."""
    b = get_backends()
    configure_logging(b.settings)
    return b


def configure_logging(settings: Settings) -> None:
    """Warnings to stderr; on the embedded runtime also the JSON lines of its log, as an audit trail.

    An operator's re-submission or purge then shows in `agentctl logs` beside the runtime's own
    records. stdout stays reserved for the command's output (one JSON document under --json).
    """
    root = logging.getLogger()
    if getattr(root, "_agentctl", False):
        return
    root._agentctl = True  # type: ignore[attr-defined]
    stderr = logging.StreamHandler()
    stderr.setLevel(logging.WARNING)
    stderr.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(stderr)
    root.setLevel(logging.INFO)
    embedded = not (settings.storage_connection or settings.storage_blob_uri)
    if embedded and not settings.appinsights_connection_string:
        # The runtime's own log file, rotated by the same settings, so one `agentctl logs` reads both.
        audit = rotating_log_file(
            settings.runtime_log_path, settings.runtime_log_max_bytes, settings.runtime_log_backups
        )
        audit.addFilter(JobDimensions())
        root.addHandler(audit)
