"""Following a job's progress events: over HTTP (Server-Sent Events, resuming with Last-Event-ID) or,
without an API URL, from the backends the settings describe (the same events, read from the job record).

`agentctl jobs watch ID` and `make demo` use these; rendering is one line per event under a live
status line (on a terminal), plain lines when piped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape

from shared.cli.context import backends
from shared.cli.output import CliError, JsonOpt, console, emit

TERMINAL = ("succeeded", "failed", "cancelled")
RECONNECT_PAUSE_SECONDS = 0.5


def follow_sse(
    client: httpx.Client, job_id: str, *, after: int = 0, timeout: float = 600.0, reconnects: int = 20
) -> Iterator[dict[str, Any]]:
    """The job's events after `after` until its terminal event, reconnecting with Last-Event-ID."""
    deadline = time.monotonic() + timeout
    failures = 0
    while time.monotonic() < deadline:
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(after)}
        try:
            with client.stream("GET", f"/api/jobs/{job_id}/events", headers=headers, timeout=60) as response:
                if response.status_code != 200:
                    response.read()
                    raise CliError(
                        f"GET /api/jobs/{job_id}/events answered {response.status_code}: {response.text[:200]}",
                        "check the job id and the API key (its tenant must own the job)",
                        exit_code=2 if response.status_code == 404 else 1,
                    )
                for event in _parse(response):
                    failures = 0
                    after = int(event["id"])
                    yield event
                    if event["type"] in TERMINAL:
                        return
        except httpx.TransportError as exc:
            failures += 1
            if failures > reconnects:
                raise CliError(f"lost the event stream: {exc}", "is the runtime up? (`agentctl health`)") from exc
        time.sleep(RECONNECT_PAUSE_SECONDS)  # the server ended the stream (its time limit) or it broke: resume
    raise CliError(f"job {job_id} did not end within {timeout:g} s", "watch it again, or see `agentctl jobs show`")


def _parse(response: httpx.Response) -> Iterator[dict[str, Any]]:
    data: list[str] = []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield json.loads("\n".join(data))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))


def follow_backends(job_id: str, *, after: int = 0, timeout: float = 600.0) -> Iterator[dict[str, Any]]:
    """The same events read from the job record directly (another process: a bounded poll)."""
    from shared.services import events

    b = backends()
    job = b.jobs.get(job_id)
    if job is None:
        raise CliError(f"no job {job_id}", "list jobs with `agentctl jobs list`", kind="not-found", exit_code=2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = events.page(b, job.tenant, job_id, after)
        for event in page.events:
            after = event.id
            yield event.model_dump(mode="json")
        if page.ended:
            return
        time.sleep(min(b.settings.events_poll_seconds, 0.5))
    raise CliError(f"job {job_id} did not end within {timeout:g} s", "watch it again, or see `agentctl jobs show`")


def describe(event: dict[str, Any]) -> str:
    """One line for one event (rich markup)."""
    kind, data = event["type"], event.get("data") or {}
    if kind == "step":
        return (
            f"  step {data['step']:>2} [dim]{data['kind']:<8}[/] {escape(data['summary'])} "
            f"[dim]({data['tokens']} tokens, {data['duration_ms']:.0f} ms)[/]"
        )
    if kind == "waiting_for_approval":
        return (
            f"  [yellow]waiting for approval[/] of {escape(', '.join(data['pending']))} "
            f"(until {data['deadline'][:19]}Z): POST /api/jobs/{{id}}/approve or /reject"
        )
    if kind in ("approved", "rejected"):
        comment = f": {escape(data['comment'])}" if data.get("comment") else ""
        return f"  [cyan]{kind}[/]{comment}"
    if kind == "report_ready":
        return f"  report ready: {escape(data['report'])}"
    if kind in TERMINAL:
        error = data.get("error") or {}
        reason = f" ({escape(error['reason'])}: {escape(error.get('detail', ''))})" if error else ""
        colour = "green" if kind == "succeeded" else "red"
        return f"[bold {colour}]{kind}[/]{reason} after {data.get('step')} steps"
    return f"  {kind}"


def show(stream: Iterator[dict[str, Any]], out: Console = console) -> list[dict[str, Any]]:
    """Print each event as it comes, under a live status line on a terminal; return them all."""
    seen: list[dict[str, Any]] = []
    if not out.is_terminal:
        for event in stream:
            out.print(describe(event))
            seen.append(event)
        return seen
    with out.status("waiting for the job's first event...") as status:
        for event in stream:
            out.print(describe(event))
            seen.append(event)
            status.update(f"{event['type']} (event {event['id']}); following...")
    return seen


def jobs_watch(
    job_id: str,
    url: Annotated[
        str | None,
        typer.Option("--url", envvar="AGENT_API_URL", help="API base URL; without it, read the backends directly."),
    ] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="AGENT_API_KEY", help="Key for --url.")] = None,
    after: Annotated[int, typer.Option(min=0, help="Start after this event id.")] = 0,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 3600.0,
    as_json: JsonOpt = False,
) -> None:
    """Follow a job's progress events live until it ends (exit 1 unless it succeeded)."""
    if url:
        from shared.settings import DEV_API_KEY

        with httpx.Client(base_url=url, headers={"X-API-Key": api_key or DEV_API_KEY}) as client:
            seen = _collect(follow_sse(client, job_id, after=after, timeout=timeout), as_json)
    else:
        seen = _collect(follow_backends(job_id, after=after, timeout=timeout), as_json)
    if as_json:
        emit(seen, as_json=True)
    if not seen or seen[-1]["type"] != "succeeded":
        raise typer.Exit(1)


def _collect(stream: Iterator[dict[str, Any]], as_json: bool) -> list[dict[str, Any]]:
    return list(stream) if as_json else show(stream)
