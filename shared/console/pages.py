"""What every console page shares: templates, the signed-in caller, its tenant scope, and replies.

A tenant operator sees its own tenant only; a caller whose role is `admin` sees every tenant.
Platform-wide actions (backups, restore, sweep, purge, retention, checks) take the same gate
as the admin API (its `require_admin`, handed over in `access.KeyCheck`), so they follow the
API when roles change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from shared.console import i18n, session
from shared.console.access import Operator, key_check
from shared.contracts import Job
from shared.errors import NotFound

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
ALL_TENANTS_ROLE = "admin"


class JobNotVisible(NotFound):
    fix = "check the id; a job of another tenant does not exist for this operator"


def language(request: Request) -> str:
    return i18n.negotiate(request.headers.get("accept-language"), request.cookies.get(i18n.COOKIE))


def current(request: Request) -> session.Session:
    """The signed-in session; NotSignedIn (a redirect to the sign-in page) otherwise."""
    found = session.read(request)
    if found is None or found.caller is None:
        raise session.NotSignedIn("sign in with an operator key")
    return found


SessionDep = Annotated[session.Session, Depends(current)]


def caller_of(s: session.Session) -> Operator:
    assert s.caller is not None  # current() only returns signed-in sessions
    return s.caller


def tenant_scope(caller: Operator) -> str | None:
    """The one tenant this caller may see, or None for every tenant."""
    return None if caller.role == ALL_TENANTS_ROLE else caller.tenant


def require_platform(request: Request, caller: Operator) -> None:
    """Platform-wide actions: the same gate as /api/admin's platform routes (admin only)."""
    key_check(request).require_admin(caller)


def visible_job(caller: Operator, job: Job | None, job_id: str) -> Job:
    scope = tenant_scope(caller)
    if job is None or (scope is not None and job.tenant != scope):
        raise JobNotVisible(f"no job {job_id}")
    return job


def safe_next(target: str | None) -> str:
    """A redirect target inside the console only (no open redirect)."""
    if target and target.startswith("/console") and not target.startswith("//") and "\\" not in target:
        return target
    return "/console/"


def render(
    request: Request, name: str, s: session.Session | None, *, status: int = 200, **context: Any
) -> HTMLResponse:
    """A page (or fragment) in the request's language; sets a fresh anonymous session when there is none."""
    fresh = s is None
    s = s or session.new_session()
    lang = language(request)
    response = templates.TemplateResponse(
        request,
        name,
        {
            "t": i18n.translator(lang),
            "lang": lang,
            "session": s,
            "caller": s.caller,
            "csrf": s.csrf,
            # Where the language switch returns to: this page, or the overview after a form's POST.
            "here": (request.url.path + (f"?{request.url.query}" if request.url.query else ""))
            if request.method == "GET"
            else "/console/",
            "scope": tenant_scope(s.caller) if s.caller else None,
            **context,
        },
        status_code=status,
    )
    if fresh:
        session.write(response, request, s)
    return response


def see_other(url: str) -> Response:
    return RedirectResponse(url, status_code=303)


def sign_in_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.headers.get("hx-request"):
        return Response(status_code=401, headers={"HX-Redirect": "/console/sign-in"})
    return see_other(f"/console/sign-in?next={quote(safe_next(target), safe='')}")
