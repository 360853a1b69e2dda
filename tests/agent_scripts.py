"""Helpers for driving the research agent against the scripted OpenAI-compatible server.

The server (tests/fixtures/scripted_openai.py) plays the model; these helpers build its replies,
play a small competent researcher when a test only needs *a* model, and run jobs through the
step engine either message by message or with the runtime's own queue consumer.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.contracts import Job, StepMessage
from shared.engine.backends import Backends
from shared.engine.steps import handle_step
from shared.runtime.consumer import QueueConsumer
from shared.runtime.functions import discover
from shared.text import split_sentences
from tests.fixtures.app import wait_for
from tests.fixtures.scripted_openai import Reply, ScriptedResponse, completion

# No OPENAI_API_KEY: a local OpenAI-compatible server does not need one.
SCRIPTED_ENV = {"OPENAI_MODEL": "scripted", "STEP_RETRY_BASE_SECONDS": "0.05", "MODEL_TIMEOUT_SECONDS": "10"}
_call_ids = itertools.count(1)


def call(name: str, **arguments: Any) -> dict[str, Any]:
    """One tool call for completion(tool_calls=[...]), with an id unique in the test run."""
    return {"id": f"call_{next(_call_ids)}", "name": name, "arguments": arguments}


def write_report(markdown: str, citations: list[dict[str, Any]]) -> dict[str, Any]:
    return call("write_report", markdown=markdown, citations=citations)


def sentences(text: str) -> list[str]:
    """The text's sentences a citation could quote (headings left out)."""
    found = [text[s:e].strip() for s, e in split_sentences(text)]
    return [s for s in found if len(s) >= 12 and not s.startswith("#")]


def quote_from(b: Backends, doc_id: str, chunk_id: int, n: int = 0) -> str:
    return sentences(b.index.get_chunks(doc_id, chunk_id)[0].content)[n]


def cite(n: int, doc_id: str, chunk_id: int, quote: str) -> dict[str, Any]:
    return {"n": n, "doc_id": doc_id, "chunk_id": chunk_id, "quote": quote}


def task_of(body: dict[str, Any]) -> str:
    """The job's question: the first paragraph of the first user message (later ones are memory)."""
    first = next(m for m in body["messages"] if m["role"] == "user")
    return str(first["content"]).split("\n\n", 1)[0]


def tool_results(messages: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """(tool name, decoded answer) for each tool message, in order."""
    names = {c["id"]: c["function"]["name"] for m in messages for c in m.get("tool_calls") or []}
    out = []
    for m in messages:
        if m["role"] == "tool":
            out.append((names.get(m["tool_call_id"], ""), json.loads(m["content"])))
    return out


@dataclass
class Researcher:
    """A competent model in a few lines: search the question, read the top hits, cite one sentence of each.

    Stateless: every turn is decided from the request alone, like a real model. `usage` is what
    each reply reports; `think` is how long each reply takes, during which `in_flight` counts it.
    """

    usage: tuple[int, int] = (100, 20)
    reads: int = 2
    think: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, body: dict[str, Any]) -> ScriptedResponse:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.think)
            return self.turn(body)
        finally:
            with self._lock:
                self.in_flight -= 1

    def turn(self, body: dict[str, Any]) -> ScriptedResponse:
        prompt, completion_tokens = self.usage
        results = tool_results(body["messages"])
        searches = [r for name, r in results if name == "search_knowledge"]
        chunks = [c for name, r in results if name == "read_document" for c in r.get("chunks", [])]
        if not searches:
            calls = [call("search_knowledge", query=task_of(body))]
        elif not chunks:
            calls = [call("read_document", doc_id=h["doc_id"], chunk_id=h["chunk_id"])
                     for h in searches[-1]["results"][: self.reads]]
        else:
            cites = [cite(n, c["doc_id"], c["chunk_id"], sentences(c["content"])[0])
                     for n, c in enumerate(chunks, start=1)]
            markdown = "\n".join(f"- {c['quote']} [{c['n']}]" for c in cites) + "\n"
            calls = [call("write_report", markdown=markdown, citations=cites)]
        return completion(tool_calls=calls, prompt_tokens=prompt, completion_tokens=completion_tokens)


class ByTask:
    """Answer each request from the script of the job it belongs to (several jobs share one server)."""

    def __init__(self, scripts: dict[str, list[Reply | Callable[[dict[str, Any]], Reply]]],
                 fallback: Callable[[dict[str, Any]], Reply]) -> None:
        self.scripts = {task: list(replies) for task, replies in scripts.items()}
        self.fallback = fallback
        self.log: list[tuple[float, str, int]] = []  # (monotonic time, task, status)
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> Reply:
        task = task_of(body)
        with self._lock:
            queued = self.scripts.get(task) or []
            reply = queued.pop(0) if queued else self.fallback
        if callable(reply):
            reply = reply(body)
        status = reply.status if isinstance(reply, ScriptedResponse) else 200
        with self._lock:
            self.log.append((time.monotonic(), task, status))
        return reply


def step_body(job_id: str, step: int) -> bytes:
    return StepMessage(job_id=job_id, step=step).model_dump_json().encode()


def run_steps(b: Backends, job_id: str, *, deliveries: int = 1, until: int | None = None) -> Job:
    """Deliver steps 1, 2, ... of one job in order (each `deliveries` times) until it ends (or step `until`).

    Bypasses the queue, so a test decides exactly which job moves when; the messages the engine
    enqueues meanwhile are simply left in the queue.
    """
    step = b.jobs.get(job_id).step + 1
    while True:
        for _ in range(deliveries):
            handle_step(b, step_body(job_id, step))
        job = b.jobs.get(job_id)
        if job.finished or (until is not None and step >= until):
            return job
        assert job.step == step, f"step {step} of {job_id} did not commit"
        step += 1


def consume(b: Backends, job_ids: list[str], *, concurrency: int = 2, timeout: float = 30.0) -> list[Job]:
    """Run the app's queue function (discovered from function_app) with N workers until every job ends."""
    fn = discover("function_app").queues[0]
    consumer = QueueConsumer(b.queue, fn, concurrency=concurrency, max_lock_renewal_seconds=30)  # type: ignore[arg-type]
    consumer.start()
    try:
        return wait_for(lambda: all((j := b.jobs.get(i)) is not None and j.finished for i in job_ids)
                        and [b.jobs.get(i) for i in job_ids], timeout)
    finally:
        consumer.stop()


def assert_verified(b: Backends, citations: list[Any]) -> None:
    """Every citation quotes exactly the text at its offsets in the indexed chunk."""
    assert citations
    for c in citations:
        c = c if isinstance(c, dict) else c.model_dump()
        chunk = b.index.get_chunks(c["doc_id"], c["chunk_id"])[0]
        assert chunk.content[c["start"]:c["end"]] == c["quote"], c
