"""What the job queue's trigger does with a message: run an agent step, ingest a batch of documents
(shared/services/ingestion.py), or attempt a webhook delivery.

Webhook deliveries ride the same queue as the steps (the outbox: shared/engine/outbox.py), so they
share its durability, scheduling and dead-lettering, and the app needs no second queue.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from shared.engine.backends import Backends
from shared.engine.outbox import WebhookMessage
from shared.engine.steps import handle_step
from shared.services import ingestion, webhooks

__all__ = ["handle_message"]


def handle_message(b: Backends, body: bytes, delivery_count: int = 1) -> None:
    """Run what the message asks for. Returns normally when it may be completed; raises to abandon it."""
    if ingestion.is_ingestion_message(body):
        ingestion.handle_batch(b, body, delivery_count)
        return
    if b'"webhook"' in body:
        try:
            parsed = json.loads(body)
            msg = WebhookMessage.model_validate(parsed) if isinstance(parsed, dict) and "webhook" in parsed else None
        except (ValueError, ValidationError):
            msg = None
        if msg is not None:
            webhooks.deliver(b, msg)
            return
    handle_step(b, body, delivery_count)
