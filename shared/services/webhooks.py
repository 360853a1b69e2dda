"""Signed webhooks: durable deliveries of a job's report_ready and ending, at least once.

- Outbox: the engine puts a WebhookMessage on the job queue when a job ends
  (shared/engine/outbox.py); each attempt is one delivery of such a message, and a failed attempt
  schedules the next one as a new message (exponential backoff with jitter, honouring Retry-After).
  After WEBHOOK_MAX_ATTEMPTS, or at once on 410 Gone or a refused address, the delivery is
  dead-lettered with its reason; `agentctl webhooks list|redeliver` shows and retries it.
- Signing, in the manner of the Standard Webhooks specification: headers webhook-id (the same on
  every attempt: the receiver's idempotency key), webhook-timestamp and webhook-signature
  ("v1,<base64 HMAC-SHA256 of '{id}.{timestamp}.{body}'>"), one signature per tenant key, so a key is
  rotated by listing the new one first and dropping the old one once receivers have it.
- SSRF: the host must be on the tenant's allow-list, and every address it resolves to must be public
  unless it lies in WEBHOOK_ALLOWED_NETWORKS; the request goes to the checked address (no second
  lookup, no redirects), so a DNS answer cannot change between the check and the connection.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import socket
import time
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, Field

from shared.contracts import Job, utcnow
from shared.engine import layout
from shared.engine.backends import Backends
from shared.engine.outbox import WebhookMessage, callback_for
from shared.engine.updates import update_json
from shared.errors import InvalidRequest, NotFound
from shared.settings import Settings

__all__ = [
    "Delivery",
    "WebhookRefused",
    "check_callback",
    "deliver",
    "list_deliveries",
    "redeliver",
    "sign",
]

log = logging.getLogger("agent.webhooks")
USER_AGENT = "agent-framework-webhooks/1"


class WebhookRefused(InvalidRequest):
    kind = "webhook-refused"
    fix = (
        "use an https URL whose host is on the tenant's allow-list (WEBHOOK_TENANTS) and resolves to a public "
        "address; the operator may allow private ranges with WEBHOOK_ALLOWED_NETWORKS"
    )


class DeliveryNotFound(NotFound):
    fix = "list deliveries with `agentctl webhooks list`"


class Attempt(BaseModel):
    n: int
    at: datetime
    status_code: int | None = None
    error: str | None = None
    duration_ms: float = 0.0
    next_at: datetime | None = Field(None, description="When the next attempt is scheduled, if any.")


class Delivery(BaseModel):
    """One webhook event of one job, and every attempt to deliver it."""

    id: str = Field(description="{job_id}.{event}; sent as webhook-id on every attempt.")
    tenant: str
    job_id: str
    event: str
    url: str
    body: str = Field(description="The JSON payload, fixed at the first attempt (the signature covers it).")
    status: Literal["pending", "delivered", "dead"] = "pending"
    attempts: list[Attempt] = Field(default_factory=list)
    round_start: int = Field(0, description="Attempts before the last redeliver; max attempts count from here.")
    dead_reason: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    delivered_at: datetime | None = None


# --- the allow-list and the address check -------------------------------------------------------------


def _host_allowed(host: str, allowed: list[str]) -> bool:
    host = host.lower().rstrip(".")
    for entry in allowed:
        entry = entry.lower().rstrip(".")
        if host == entry or (entry.startswith("*.") and host.endswith(entry[1:])):
            return True
    return False


def check_callback(settings: Settings, tenant: str, url: str) -> str:
    """The URL if the tenant may name it (scheme, allow-list); WebhookRefused otherwise. No DNS here."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise WebhookRefused(f"callback_url {url!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise WebhookRefused("callback_url must not carry credentials")
    config = settings.webhook_tenants.get(tenant)
    if config is None or not _host_allowed(parts.hostname, config.allowed_hosts):
        raise WebhookRefused(f"host {parts.hostname!r} is not on tenant {tenant}'s webhook allow-list")
    return url


def _operator_allows(address: ipaddress.IPv4Address | ipaddress.IPv6Address, settings: Settings) -> bool:
    return any(address in ipaddress.ip_network(n, strict=False) for n in settings.webhook_allowed_networks)


def resolve_checked(settings: Settings, url: str) -> str:
    """The address to connect to: every address the host resolves to must be public or operator-allowed."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise WebhookRefused(f"host {host!r} does not resolve: {exc}") from exc
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not addresses:
        raise WebhookRefused(f"host {host!r} has no address")
    for address in addresses:
        if address.is_global and not address.is_multicast:
            continue
        if _operator_allows(address, settings):
            continue
        raise WebhookRefused(
            f"host {host!r} resolves to {address}, a private, loopback, link-local or reserved address "
            "(allow it with WEBHOOK_ALLOWED_NETWORKS if that is intended)"
        )
    chosen = addresses[0]
    if parts.scheme == "http" and not _operator_allows(chosen, settings):
        raise WebhookRefused("plain http is only for operator-allowed networks; use https")
    return str(chosen)


# --- signing --------------------------------------------------------------------------------------


def _key(secret: str) -> bytes:
    raw = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError:
        return raw.encode()


def sign(secrets: list[str], webhook_id: str, timestamp: int, body: str) -> str:
    """The webhook-signature header: "v1,<sig>" per key, space-separated (Standard Webhooks)."""
    content = f"{webhook_id}.{timestamp}.{body}".encode()
    return " ".join(
        "v1," + base64.b64encode(hmac.new(_key(s), content, hashlib.sha256).digest()).decode() for s in secrets
    )


# --- deliveries -----------------------------------------------------------------------------------


def _key_of(tenant: str, delivery_id: str) -> str:
    return layout.webhook_key(tenant, delivery_id)


def _load(data: bytes) -> Delivery:
    return Delivery.model_validate_json(data)


def _dump(d: Delivery) -> bytes:
    return d.model_dump_json().encode()


def _payload(job: Job, event: str) -> str:
    data = {
        "job_id": job.id,
        "status": job.status,
        "step": job.step,
        "error": job.error.model_dump() if job.error else None,
        "usage": job.usage.model_dump(),
        "report": f"/api/jobs/{job.id}/report" if job.status == "succeeded" else None,
    }
    stamp = (job.finished_at or utcnow()).isoformat()
    return json.dumps({"type": event, "timestamp": stamp, "data": data}, separators=(",", ":"))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        return max((parsedate_to_datetime(value) - utcnow()).total_seconds(), 0.0)
    except (TypeError, ValueError):
        return None


def backoff(settings: Settings, attempt: int, retry_after: float | None) -> float:
    """Seconds before attempt+1: exponential with jitter (half to full), at least Retry-After, capped."""
    exponential = settings.webhook_retry_base_seconds * 2 ** (attempt - 1)
    cap = float(settings.webhook_max_backoff_seconds)
    delay = min(float(exponential), cap) * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not secrecy
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, cap)


def _post(settings: Settings, delivery: Delivery, secrets: list[str]) -> tuple[int | None, str | None, float | None]:
    """(status code, error, retry-after) of one POST to the checked address."""
    check_callback(settings, delivery.tenant, delivery.url)  # the allow-list may have changed since submit
    address = resolve_checked(settings, delivery.url)
    parts = urlsplit(delivery.url)
    host = parts.hostname or ""
    netloc = f"[{address}]" if ":" in address else address
    if parts.port:
        netloc += f":{parts.port}"
    target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    timestamp = int(time.time())
    headers = {
        "Host": parts.netloc.rsplit("@", 1)[-1],
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": delivery.id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secrets, delivery.id, timestamp, delivery.body),
    }
    try:
        with httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False) as client:
            response = client.post(
                target, content=delivery.body.encode(), headers=headers, extensions={"sni_hostname": host}
            )
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:300], None
    return response.status_code, None, _retry_after(response)


def deliver(b: Backends, msg: WebhookMessage) -> None:
    """One delivery attempt. Idempotent: an attempt already recorded only re-sends its follow-up."""
    job = b.jobs.get(msg.job_id)
    if job is None:
        log.warning("webhook %s for a job that no longer exists dropped", msg.webhook)
        return
    url = callback_for(b, job)
    if url is None:
        return
    key = _key_of(job.tenant, msg.webhook)
    body = _payload(job, msg.event)

    def create(found: Delivery | None) -> Delivery | None:
        if found is not None:
            return None
        return Delivery(id=msg.webhook, tenant=job.tenant, job_id=job.id, event=msg.event, url=url, body=body)

    delivery = update_json(b.objects, key, create, load=_load, dump=_dump)
    assert delivery is not None
    if delivery.status != "pending":
        return
    if msg.attempt <= len(delivery.attempts):
        _send_next(b, delivery)  # this attempt ran already; make sure its follow-up was sent
        return
    if msg.attempt != len(delivery.attempts) + 1:
        return  # an out-of-order leftover; the attempt in line has its own message
    config = b.settings.webhook_tenants.get(job.tenant)
    secrets = config.secrets if config else []
    started = time.perf_counter()
    code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    final: str | None = None
    if not secrets:
        error, final = "no signing key", f"tenant {job.tenant} has no webhook signing key (WEBHOOK_TENANTS secrets)"
    else:
        try:
            code, error, retry_after = _post(b.settings, delivery, secrets)
        except WebhookRefused as exc:
            error, final = str(exc), f"refused: {exc}"
    elapsed = (time.perf_counter() - started) * 1000
    if code == 410:
        final = "the receiver answered 410 Gone: it no longer wants these deliveries"
    attempt_n = msg.attempt
    tried = attempt_n - delivery.round_start
    ok = code is not None and 200 <= code < 300
    if not ok and final is None and tried >= b.settings.webhook_max_attempts:
        last = f"HTTP {code}" if code is not None else error
        final = f"gave up after {tried} attempts; last: {last}"
    next_at = None
    if not ok and final is None:
        next_at = utcnow() + timedelta(seconds=backoff(b.settings, tried, retry_after))

    def record(found: Delivery | None) -> Delivery | None:
        if found is None or found.status != "pending" or len(found.attempts) >= attempt_n:
            return None
        found.attempts.append(
            Attempt(n=attempt_n, at=utcnow(), status_code=code, error=error, duration_ms=elapsed, next_at=next_at)
        )
        if ok:
            found.status, found.delivered_at = "delivered", utcnow()
        elif final is not None:
            found.status, found.dead_reason = "dead", final
        return found

    saved = update_json(b.objects, key, record, load=_load, dump=_dump)
    if saved is not None and saved.status == "pending":
        _send_next(b, saved)
    level = logging.INFO if ok else logging.WARNING
    log.log(
        level,
        "webhook %s attempt %s: %s",
        msg.webhook,
        attempt_n,
        "delivered" if ok else (final or f"failed ({code or error}); next at {next_at}"),
        extra={
            "event": "webhook_delivered" if ok else ("webhook_dead" if final else "webhook_failed"),
            "job_id": job.id,
            "tenant": job.tenant,
        },
    )


def _send_next(b: Backends, delivery: Delivery) -> None:
    if delivery.status != "pending" or not delivery.attempts:
        return
    last = delivery.attempts[-1]
    nxt = WebhookMessage(webhook=delivery.id, job_id=delivery.job_id, event=delivery.event, attempt=last.n + 1)
    b.queue.send(
        nxt.model_dump_json().encode(), message_id=f"webhook:{delivery.id}:a{nxt.attempt}", scheduled_at=last.next_at
    )


def list_deliveries(b: Backends, *, tenant: str | None = None, status: str | None = None) -> list[Delivery]:
    """Deliveries (one tenant's, or all), newest last; an operator's view."""
    prefix = layout.webhook_prefix(tenant)
    found = []
    for key in b.objects.list(prefix):
        obj = b.objects.get(key)
        if obj is None:
            continue
        d = _load(obj.data)
        if status is None or d.status == status:
            found.append(d)
    return sorted(found, key=lambda d: d.created_at)


def get_delivery(b: Backends, delivery_id: str) -> Delivery:
    job = b.jobs.get(delivery_id.split(".", 1)[0])
    obj = b.objects.get(_key_of(job.tenant, delivery_id)) if job else None
    if obj is None:
        raise DeliveryNotFound(f"no webhook delivery {delivery_id}")
    return _load(obj.data)


def redeliver(b: Backends, delivery_id: str) -> Delivery:
    """Try a dead (or delivered) delivery again: a new round of attempts with the same webhook-id."""
    current = get_delivery(b, delivery_id)
    key = _key_of(current.tenant, delivery_id)

    def reopen(found: Delivery | None) -> Delivery | None:
        if found is None or found.status == "pending":
            return None
        found.status, found.dead_reason, found.round_start = "pending", None, len(found.attempts)
        return found

    reopened = update_json(b.objects, key, reopen, load=_load, dump=_dump) or current
    n = len(reopened.attempts) + 1
    msg = WebhookMessage(webhook=reopened.id, job_id=reopened.job_id, event=reopened.event, attempt=n)
    b.queue.send(msg.model_dump_json().encode(), message_id=f"webhook:{reopened.id}:a{n}:r{time.time_ns()}")
    return reopened
