"""The webhook outbox: a job's endings become messages on the job queue, delivered by the webhook service.

The message is sent after the job record shows the ending, with a message id fixed by (job, event),
so a redelivered step that announces again is dropped by duplicate detection, and a lost send is
repeated by the next redelivery of the step that ended the job. The delivery itself (signing,
retries, dead letters) is shared/services/webhooks.py, reached through the same queue trigger.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from shared.contracts import Job
from shared.engine.backends import Backends

__all__ = ["WebhookMessage", "announce", "events_for", "callback_for"]


class WebhookMessage(BaseModel):
    """A queue message that asks for one webhook delivery attempt (the outbox entry)."""

    webhook: str = Field(description="The delivery id: {job_id}.{event}.")
    job_id: str
    event: str
    attempt: int = Field(1, ge=1)


def callback_for(b: Backends, job: Job) -> str | None:
    """The job's callback URL, else its tenant's default, else None (no webhooks)."""
    if job.callback_url:
        return job.callback_url
    tenant = b.settings.webhook_tenants.get(job.tenant)
    return tenant.default_url if tenant else None


def events_for(job: Job) -> list[str]:
    """The webhook events a finished job announces: report_ready when it has its report, then its ending."""
    if not job.finished:
        return []
    return (["job.report_ready"] if job.status == "succeeded" else []) + [f"job.{job.status}"]


def announce(b: Backends, job: Job) -> None:
    """Put the finished job's webhook deliveries on the outbox (idempotent)."""
    if callback_for(b, job) is None:
        return
    for event in events_for(job):
        msg = WebhookMessage(webhook=f"{job.id}.{event}", job_id=job.id, event=event)
        b.queue.send(msg.model_dump_json().encode(), message_id=f"webhook:{msg.webhook}:a1")
