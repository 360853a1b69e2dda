"""agentctl keys: API keys stored as hashes; create (the key is printed this once), list, revoke.

Rotation without downtime: create the new key, move the callers to it, revoke the old one; both
work in between. Keys configured in API_KEYS are listed too (as `configured`), but change only with
the app settings.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from shared.cli.context import backends
from shared.cli.output import CliError, JsonOpt, emit, fields, table

keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
ROLES = ("submitter", "operator", "admin")


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="The tenant the key acts for.")],
    role: Annotated[str, typer.Option(help="submitter, operator or admin.")] = "submitter",
    expires: Annotated[str | None, typer.Option(help="Lifetime such as 30d, 12h, 2w; none: until revoked.")] = None,
    note: Annotated[str, typer.Option(help="Who or what holds it (shown in `keys list`).")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Issue a key; it is printed this once and stored only as its hash."""
    from shared.services import keys

    if role not in ROLES:
        raise CliError(f"unknown role {role!r}", f"use one of: {', '.join(ROLES)}", kind="invalid")
    issued = keys.issue(
        backends(),
        tenant,
        role,  # type: ignore[arg-type]  # checked against ROLES above
        expires_in=keys.parse_duration(expires) if expires else None,
        note=note,
    )
    shown = {"key": issued.key, **issued.record.model_dump(exclude={"sha256"})}

    def render(data: dict[str, Any]) -> None:
        typer.echo("key (copy it now: it is stored only as a hash and not shown again):")
        typer.echo(data["key"])  # on its own line, unwrapped, so it copies whole
        fields(f"key {data['id']}")({k: v for k, v in data.items() if k != "key"})

    emit(shown, render, as_json=as_json)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every key (stored and configured) with its tenant, role, state and last use; never a secret."""
    from datetime import UTC, datetime

    from shared.services import keys

    b = backends()
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = [
        {
            **record.model_dump(mode="json", exclude={"sha256"}),
            "state": "revoked" if record.revoked_at else ("expired" if not record.active(now) else "active"),
            "source": "stored",
        }
        for record in keys.list_keys(b, tenant)
    ]
    rows += [
        {"id": f"{entry.tenant}:{key[:4]}…", "tenant": entry.tenant, "role": entry.role, "state": "active"}
        | {"source": "configured"}
        for key, entry in b.settings.api_keys.items()
        if tenant is None or entry.tenant == tenant
    ]

    def render(data: list[dict[str, Any]]) -> None:
        columns = ["id", "tenant", "role", "state", "source", "expires_at", "last_used_at", "note"]
        table(f"keys: {len(data)}", columns, [[d.get(c) for c in columns] for d in data])

    emit(rows, render, as_json=as_json)


@keys_app.command("revoke")
def keys_revoke(key_id: str, as_json: JsonOpt = False) -> None:
    """Revoke a stored key from now on (its record stays, as the trail of who held access)."""
    from shared.services import keys

    record = keys.revoke(backends(), key_id)
    emit(record.model_dump(exclude={"sha256"}), fields(f"key {key_id} revoked"), as_json=as_json)
