"""Sign-in, sign-out and the language switch."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from shared.console import i18n, pages, session
from shared.errors import Forbidden, TooManyRequests, Unauthorized

router = APIRouter()


@router.get("/sign-in")
def sign_in_page(request: Request, next: str | None = None) -> Response:
    return pages.render(request, "sign_in.html", session.read(request), next=pages.safe_next(next))


@router.post("/sign-in")
def sign_in(
    request: Request,
    key: Annotated[str, Form(max_length=500)] = "",
    csrf: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/console/",
) -> Response:
    current = session.read(request)
    session.check_csrf(current, csrf)
    try:
        caller = session.sign_in(request, key)
    except Unauthorized:
        problem = "key_invalid"
    except Forbidden:
        problem = "key_not_operator"
    except TooManyRequests:
        problem = "rate_limited"
    else:
        response = pages.see_other(pages.safe_next(next))
        session.write(response, request, session.new_session(caller))  # a new CSRF token with the new identity
        return response
    return pages.render(request, "sign_in.html", current, status=401, problem=problem, next=pages.safe_next(next))


@router.post("/sign-out")
def sign_out(request: Request, csrf: Annotated[str, Form(max_length=200)] = "") -> Response:
    session.check_csrf(session.read(request), csrf)
    response = pages.render(request, "sign_in.html", None, problem="signed_out", next="/console/")
    return response


@router.post("/language")
def switch_language(
    request: Request,
    lang: Annotated[str, Form(max_length=5)],
    csrf: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/console/",
) -> Response:
    session.check_csrf(session.read(request), csrf)
    response = pages.see_other(pages.safe_next(next))
    if lang in i18n.LANGUAGES:
        response.set_cookie(i18n.COOKIE, lang, max_age=365 * 86400, path="/console", httponly=True, samesite="strict")
    return response
