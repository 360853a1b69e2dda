"""Dead letters: the queue's dead-lettered steps with cause and job; resubmit one, sweep now, purge.

Each action is confirmed on its own page first (it names what will happen) and reports what it did.
A tenant operator sees and resubmits only its own tenant's dead letters; sweep and purge act on the
whole queue, as the admin API's do.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import Response

from shared.console import pages, session
from shared.console.access import BackendsDep
from shared.console.pages import SessionDep
from shared.engine.backends import Backends
from shared.errors import NotFound
from shared.maintenance import sweep
from shared.services import operations

router = APIRouter()
ACTIONS = ("resubmit", "sweep", "purge")


def _visible(b: Backends, s: session.Session) -> list[operations.DeadLetter]:
    scope = pages.tenant_scope(pages.caller_of(s))
    return [d for d in operations.dead_letters(b, 500) if scope is None or d.tenant == scope]


@router.get("/dead-letters")
def dead_letter_list(request: Request, s: SessionDep, b: BackendsDep) -> Response:
    return pages.render(request, "dead_letters.html", s, letters=_visible(b, s))


def _one(b: Backends, s: session.Session, message_id: str) -> operations.DeadLetter:
    letter = operations.dead_letter(b, message_id)
    scope = pages.tenant_scope(pages.caller_of(s))
    if scope is not None and letter.tenant != scope:
        raise operations.DeadLetterNotFound(f"no dead-lettered message {message_id}")
    return letter


@router.get("/dead-letters/confirm")
def confirm(
    request: Request,
    s: SessionDep,
    b: BackendsDep,
    action: Annotated[str, Query(max_length=20)],
    message_id: Annotated[str, Query(max_length=300)] = "",
) -> Response:
    if action not in ACTIONS:
        raise NotFound(f"no action {action}")
    letter = _one(b, s, message_id) if action == "resubmit" else None
    if action != "resubmit":
        pages.require_platform(request, pages.caller_of(s))
    count = operations.queue_status(b).dead_lettered
    return pages.render(
        request, "dead_letter_confirm.html", s, action=action, letter=letter, message_id=message_id, count=count
    )


@router.post("/dead-letters/{action}")
def act(
    request: Request,
    action: str,
    s: SessionDep,
    b: BackendsDep,
    csrf: Annotated[str, Form()] = "",
    message_id: Annotated[str, Form(max_length=300)] = "",
) -> Response:
    session.check_csrf(s, csrf)
    if action == "resubmit":
        _one(b, s, message_id)
        done = [operations.resubmit_dead_letter(b, message_id)]
        return pages.render(request, "dead_letter_done.html", s, action=action, actions=done)
    if action not in ACTIONS:
        raise NotFound(f"no action {action}")
    pages.require_platform(request, pages.caller_of(s))
    if action == "sweep":
        swept = sweep.sweep_dead_letters(b)
        return pages.render(request, "dead_letter_done.html", s, action=action, actions=swept.actions, swept=swept)
    purged = operations.purge_dead_letters(b)
    return pages.render(request, "dead_letter_done.html", s, action=action, actions=[], purged=purged)
