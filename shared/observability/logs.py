"""Structured logs: every record of a job carries job_id, step and tenant.

The dimensions ride on a context variable, so code deep in a step need not pass them
along; the Azure Monitor exporter turns record attributes into customDimensions, which
is what the runbook's KQL filters on.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

from shared.text import encodable

# Read-only default: job_context always sets a new mapping, it never updates the one it found.
_dimensions: ContextVar[Mapping[str, object]] = ContextVar("job_dimensions", default=MappingProxyType({}))
DIMENSIONS = ("job_id", "step", "tenant")


@contextmanager
def job_context(**dimensions: object) -> Iterator[None]:
    token = _dimensions.set({**_dimensions.get(), **{k: v for k, v in dimensions.items() if v is not None}})
    try:
        yield
    finally:
        _dimensions.reset(token)


class JobDimensions(logging.Filter):
    """Copies the current job's dimensions onto each record (as attributes); an explicit `extra` wins.

    A handler filter rather than a LogRecordFactory: a factory runs before `extra` is applied, and
    logging raises KeyError when `extra` names an attribute the record already has, so a call with
    extra={"job_id": ...} inside a job_context would fail in the caller. Handlers run in the caller's
    thread and context, so the context variable still reads the right job.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _dimensions.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def add_job_dimensions(handler: logging.Handler) -> None:
    """Give a handler the JobDimensions filter, once, however often telemetry is configured."""
    if not any(isinstance(f, JobDimensions) for f in handler.filters):
        handler.addFilter(JobDimensions())


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in (
            *DIMENSIONS,
            "event",
            "reason",
            "count",
            "duration_ms",
            "tokens",
            "prompt_tokens",
            "completion_tokens",
            "worker",  # the worker process that logged it, in the embedded runtime's worker processes
        ):
            if hasattr(record, key):
                line[key] = getattr(record, key)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        # Text a caller sent may hold lone surrogates: written escaped, or the whole line would be lost.
        return json.dumps(
            {k: encodable(v) if isinstance(v, str) else v for k, v in line.items()}, ensure_ascii=False, default=str
        )


def rotating_log_file(path: Path, max_bytes: int, backups: int) -> logging.Handler:
    """A JSON-lines file handler that rotates at max_bytes (0: never), keeping path.1 .. path.{backups}.

    Several processes may append to one file (the runtime and the CLI); each rotates by its own
    handle, so around a rotation a few lines can land in path.1, which `agentctl logs` reads too.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    handler.setFormatter(JsonLines())
    return handler


def log_files(path: Path) -> list[Path]:
    """The log file and its rotated predecessors that exist, oldest first (path.N .. path.1, path)."""
    rotated = [p for p in path.parent.glob(f"{path.name}.*") if p.suffix[1:].isdigit()]
    rotated.sort(key=lambda p: int(p.suffix[1:]), reverse=True)
    return rotated + ([path] if path.exists() else [])


def configure_json_logging(
    level: str = "INFO", log_file: Path | None = None, *, max_bytes: int = 10_000_000, backups: int = 3
) -> None:
    """JSON lines to stdout (and to a size-rotated file the CLI's `logs` command reads, when given)."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonLines) for h in root.handlers):
        return
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_file is not None:
        handlers.append(rotating_log_file(log_file, max_bytes, backups))
    for handler in handlers:
        handler.setFormatter(JsonLines())
        add_job_dimensions(handler)
        root.addHandler(handler)
    root.setLevel(level)
