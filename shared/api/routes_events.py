"""/api/jobs/{id}/events: a job's progress as Server-Sent Events, or as JSON pages (?after=, ?wait=)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from shared.api.deps import BackendsDep
from shared.api.security import CallerDep
from shared.engine import watch
from shared.engine.backends import Backends
from shared.services import events
from shared.services.events import EventPage, JobEvent

router = APIRouter(prefix="/api/jobs", tags=["jobs"])
MAX_WAIT_SECONDS = 60.0
RECONNECT_MS = 2000

SSE_DOC = """`Accept: text/event-stream`: Server-Sent Events. Each event has `id:` (1, 2, 3, ... per job),
`event:` (its type) and `data:` (the JSON of the event). Reconnect with `Last-Event-ID: k` to get
exactly the events after k; comment lines (`: heartbeat`) keep the connection open; the stream ends
after the terminal event (`succeeded`, `failed` or `cancelled`), or after EVENTS_MAX_STREAM_SECONDS,
when the client resumes.

Otherwise: a JSON page of the events after `?after=` (default 0). With `?wait=S`, the request waits
up to S seconds for at least one new event (long-poll, for hosts that buffer responses)."""


def _sse(event: JobEvent) -> str:
    return f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event.model_dump(mode='json'))}\n\n"


class _Wakeup:
    """An asyncio.Event the job record's writers set from their threads (same process only)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    def __call__(self) -> None:
        self.loop.call_soon_threadsafe(self.event.set)

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.event.wait(), max(timeout, 0.0))
        except TimeoutError:
            pass
        self.event.clear()


async def _stream(b: Backends, tenant: str, job_id: str, after: int, first: EventPage) -> AsyncIterator[str]:
    settings = b.settings
    wake = _Wakeup()
    with watch.listen(job_id, wake):
        yield f"retry: {RECONNECT_MS}\n\n"
        started = last_sent = time.monotonic()
        page = first
        while True:
            for event in page.events:
                yield _sse(event)
                last_sent = time.monotonic()
            after = page.next_after
            if page.ended or time.monotonic() - started > settings.events_max_stream_seconds:
                return
            until_heartbeat = settings.events_heartbeat_seconds - (time.monotonic() - last_sent)
            if until_heartbeat <= 0:
                yield ": heartbeat\n\n"
                last_sent = time.monotonic()
                until_heartbeat = settings.events_heartbeat_seconds
            # Woken at once by a write in this process; other processes' writes are seen at the next poll.
            await wake.wait(min(settings.events_poll_seconds, until_heartbeat))
            page = await run_in_threadpool(events.page, b, tenant, job_id, after)


async def _long_poll(b: Backends, tenant: str, job_id: str, after: int, wait: float) -> EventPage:
    wake = _Wakeup()
    with watch.listen(job_id, wake):
        deadline = time.monotonic() + wait
        while True:
            page = await run_in_threadpool(events.page, b, tenant, job_id, after)
            left = deadline - time.monotonic()
            if page.events or page.ended or left <= 0:
                return page
            await wake.wait(min(b.settings.events_poll_seconds, left))


@router.get(
    "/{job_id}/events",
    response_model=EventPage,
    summary="Progress events: SSE with Accept: text/event-stream, else a JSON page",
    description=SSE_DOC,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def job_events(  # type: ignore[no-untyped-def]
    job_id: str,
    caller: CallerDep,
    b: BackendsDep,
    after: Annotated[int, Query(ge=0, description="Events after this id.")] = 0,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS, description="Long-poll: seconds to wait for news.")] = 0,
    accept: Annotated[str, Header()] = "application/json",
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
):
    if last_event_id is not None and last_event_id.strip().isdigit():
        after = max(after, int(last_event_id.strip()))
    # Read once before answering, so an unknown or foreign job is a 404, not an empty stream.
    first = await run_in_threadpool(events.page, b, caller.tenant, job_id, after)
    if "text/event-stream" in accept:
        return StreamingResponse(
            _stream(b, caller.tenant, job_id, after, first),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    if wait and not first.events and not first.ended:
        return await _long_poll(b, caller.tenant, job_id, after, wait)
    return first
