"""agentctl webhooks: webhook deliveries of every tenant, their attempts, and redelivery of dead ones."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from shared.cli.context import backends
from shared.cli.output import CliError, JsonOpt, emit, fields, table

webhooks_app = typer.Typer(help="Signed webhook deliveries: list, redeliver.", no_args_is_help=True)
STATUSES = ("pending", "delivered", "dead")


@webhooks_app.command("list")
def webhooks_list(
    status: Annotated[str | None, typer.Option(help="Only this status: pending, delivered, dead.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's deliveries.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Deliveries, oldest first, with their attempts and (for dead ones) why they were dead-lettered."""
    from shared.services import webhooks

    if status is not None and status not in STATUSES:
        raise CliError(f"unknown status {status!r}", f"use one of: {', '.join(STATUSES)}", kind="invalid")
    found = webhooks.list_deliveries(backends(), tenant=tenant, status=status)

    def render(data: list[dict[str, Any]]) -> None:
        rows = []
        for d in data:
            last = d["attempts"][-1] if d["attempts"] else {}
            rows.append(
                [
                    d["id"],
                    d["tenant"],
                    d["status"],
                    len(d["attempts"]),
                    last.get("status_code") or last.get("error") or "",
                    (d.get("dead_reason") or "")[:70],
                ]
            )
        table(f"webhook deliveries: {len(data)}", ["id", "tenant", "status", "attempts", "last", "dead because"], rows)

    emit(found, render, as_json=as_json)


@webhooks_app.command("redeliver")
def webhooks_redeliver(delivery_id: str, as_json: JsonOpt = False) -> None:
    """Deliver a dead (or delivered) webhook again: a new round of attempts, same webhook-id."""
    from shared.services import webhooks

    delivery = webhooks.redeliver(backends(), delivery_id)
    shown = {"id": delivery.id, "status": delivery.status, "url": delivery.url, "attempts": len(delivery.attempts)}
    emit(shown, fields(f"webhook {delivery_id} queued for redelivery"), as_json=as_json)
