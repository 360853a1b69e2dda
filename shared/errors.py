"""One error type for everything a caller or operator can be told: `ServiceError`.

Each subclass states what it is (`kind`), the HTTP status the API answers with, a short
`title`, and the operator-facing `fix`. The API's problem details and the CLI's messages are
both rendered from these attributes, so an error is described once, where it is raised.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Conflict",
    "ConfigurationError",
    "CorruptRecord",
    "DependencyUnavailable",
    "Forbidden",
    "InvalidRequest",
    "NotFound",
    "OperationRunning",
    "PayloadTooLarge",
    "ServiceError",
    "TooManyRequests",
    "Unauthorized",
    "UnsupportedMediaType",
]


class ServiceError(Exception):
    """A failure with a stated kind, HTTP status, title and fix."""

    kind: str = "error"
    status: int = 500
    title: str = "Internal error"
    fix: str = "rerun with --debug for the traceback and report it"
    exit_code: int = 1

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra  # extra members of the problem details (e.g. "errors")

    def __str__(self) -> str:
        return self.detail


class NotFound(ServiceError, LookupError):
    kind = "not-found"
    status = 404
    title = "Not found"
    fix = (
        "check the id (`agentctl jobs list`, `agentctl dlq list`, `agentctl backup list`) and that "
        "--data-dir / the Azure settings point at the right environment"
    )
    exit_code = 2


class Conflict(ServiceError):
    kind = "conflict"
    status = 409
    title = "Conflict"
    fix = "see `agentctl jobs show <id>` for its status"


class OperationRunning(Conflict):
    """Another instance holds the lease of this operation."""

    kind = "operation-running"
    fix = (
        "another instance (a timer or another operator) is doing this now; wait for it to finish, "
        "or check `agentctl logs --since 1h`"
    )
    exit_code = 5


class Unauthorized(ServiceError):
    kind = "unauthorized"
    status = 401
    title = "Unauthorized"
    fix = "send a valid API key in X-API-Key or Authorization: Bearer"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"}, **extra)


class Forbidden(ServiceError):
    kind = "forbidden"
    status = 403
    title = "Forbidden"
    fix = "use a key whose role allows this operation"


class PayloadTooLarge(ServiceError):
    kind = "too-large"
    status = 413
    title = "Payload too large"
    fix = "send a smaller body (MAX_BODY_BYTES), or split it into several requests"


class UnsupportedMediaType(ServiceError):
    kind = "unsupported-media-type"
    status = 415
    title = "Unsupported media type"
    fix = "send one of the content types the route documents"


class InvalidRequest(ServiceError, ValueError):
    kind = "validation"
    status = 422
    title = "Invalid request"
    fix = "check the request's fields (or the command's arguments, --help)"


class TooManyRequests(ServiceError):
    kind = "rate-limited"
    status = 429
    title = "Too many requests"
    fix = "wait for the time Retry-After names, then try again"


class DependencyUnavailable(ServiceError):
    """A backing service could not be reached; the caller may retry."""

    kind = "dependency-unavailable"
    status = 503
    title = "Service unavailable"
    fix = "check `agentctl health`; for the embedded runtime check --data-dir / DATA_DIR points at its data directory"
    exit_code = 4
    # A dependency that is down now may be back in a moment: say when to try again (RFC 9110 Retry-After).
    retry_after_seconds = 2

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail, headers={"Retry-After": str(self.retry_after_seconds), **(headers or {})}, **extra)


class CorruptRecord(ServiceError):
    """A stored record exists but cannot be read (torn, truncated or hand-edited)."""

    kind = "corrupt-record"
    status = 500
    title = "Stored record unreadable"
    fix = (
        "restore the record from a backup (`agentctl backup list`, `agentctl restore <id>`), or cancel the job "
        "and re-run its task (`agentctl jobs rerun <id>`)"
    )
    exit_code = 6


class ConfigurationError(ServiceError, RuntimeError):
    """A setting is missing or wrong; the message names it."""

    kind = "configuration"
    status = 500
    title = "Configuration error"
    fix = (
        "fix the app setting named above (environment, local.settings.json or app settings), or use "
        "--data-dir for the embedded runtime"
    )
    exit_code = 3
