"""The provenance of a finished job: what produced its report, from what, at what cost, checked how.

Written once when the job's final checkpoint settles (`provenance/{job_id}.json`), from the
final checkpoint, the job's checkpoints and the settings in force, so a report can be audited
later even after retention has pruned the checkpoints or the model deployment has changed. It
is a pure function of committed data plus those settings: a redelivered final step writes the
same record again.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from agents.prompts import system_prompt
from agents.state import AgentState
from agents.tools import tool_specs
from shared.contracts import Checkpoint, Job, Policy, Usage
from shared.engine.layout import provenance_key
from shared.ports import ChatModel, ObjectStore
from shared.settings import Settings

__all__ = ["Provenance", "build", "load", "prompt_version", "save"]


class StepCost(BaseModel):
    step: int
    kind: str
    prompt_tokens: int
    completion_tokens: int
    duration_ms: float


class DocumentRead(BaseModel):
    doc_id: str
    versions: list[str | None] = Field(
        description="Content hashes of the versions read (None: indexed before versions)."
    )
    chunks: list[int]


class CitationCheck(BaseModel):
    n: int | None = None
    doc_id: str | None = None
    chunk_id: int | None = None
    version: str | None = None
    page: int | None = None
    section: str | None = None
    outcome: Literal["verified", "removed"]
    why: str | None = Field(None, description="Why verification failed, for removed citations.")


class Timings(BaseModel):
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queued_ms: float | None = Field(None, description="Submission to first step.")
    run_ms: float | None = Field(None, description="First step to the end.")
    steps_ms: float = Field(description="Sum of the steps' own durations.")


class Provenance(BaseModel):
    """Everything that went into one job's report."""

    job_id: str
    tenant: str
    status: str
    model: str
    deployment: str | None = Field(None, description="Azure OpenAI deployment or OpenAI-compatible model name.")
    offline_model: bool
    prompt_version: str = Field(
        description="sha256 (16 hex) of the system prompt and the tool specs the job was given."
    )
    language: str
    policy: Policy
    documents: list[DocumentRead]
    chunks_read: int
    steps: list[StepCost]
    usage: Usage
    citations: list[CitationCheck]
    timings: Timings


def prompt_version(policy: Policy, language: str) -> str:
    """A short hash naming the instructions a job ran under: system prompt plus tool specs."""
    text = system_prompt(policy, language) + "\n" + json.dumps(tool_specs(policy.allowed_tools), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds() * 1000, 1) if start and end else None


def build(
    job: Job, final: Checkpoint, checkpoints: list[Checkpoint], model: ChatModel, settings: Settings
) -> Provenance:
    """The provenance of a job from its final checkpoint and its checkpoints (those retention has kept)."""
    state = AgentState.model_validate(final.state)
    by_doc: dict[str, DocumentRead] = {}
    for chunk in sorted(state.sources.values(), key=lambda c: (c.doc_id, c.chunk_id)):
        read = by_doc.setdefault(chunk.doc_id, DocumentRead(doc_id=chunk.doc_id, versions=[], chunks=[]))
        if chunk.version not in read.versions:
            read.versions.append(chunk.version)
        read.chunks.append(chunk.chunk_id)
    report = state.report
    citations = [
        CitationCheck(
            n=c.n,
            doc_id=c.doc_id,
            chunk_id=c.chunk_id,
            version=c.version,
            page=c.page,
            section=c.section,
            outcome="verified",
        )
        for c in (report.citations if report else [])
    ]
    removed = (report.removed_citations if report and report.removed_citations else None) or state.removed_citations
    for failed in removed:
        raw = failed.get("citation") or {}
        chunk_id = raw.get("chunk_id")
        citations.append(
            CitationCheck(
                n=failed.get("n"),
                doc_id=raw.get("doc_id"),
                chunk_id=chunk_id if isinstance(chunk_id, int) else None,
                outcome="removed",
                why=str(failed.get("why", "")),
            )
        )
    steps = [
        StepCost(
            step=cp.step,
            kind=cp.kind,
            prompt_tokens=cp.usage.prompt_tokens,
            completion_tokens=cp.usage.completion_tokens,
            duration_ms=round(cp.duration_ms, 1),
        )
        for cp in sorted(checkpoints, key=lambda c: c.step)
    ]
    finished_at = job.finished_at or final.created_at
    return Provenance(
        job_id=job.id,
        tenant=job.tenant,
        status=final.outcome.status if final.outcome else job.status,
        model=(report.model if report and report.model else model.name),
        deployment=settings.azure_openai_deployment or settings.openai_model,
        offline_model=model.offline,
        prompt_version=prompt_version(job.policy, state.language),
        language=state.language,
        policy=job.policy,
        documents=list(by_doc.values()),
        chunks_read=len(state.sources),
        steps=steps,
        usage=final.total_usage,
        citations=citations,
        timings=Timings(
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=finished_at,
            queued_ms=_ms(job.created_at, job.started_at),
            run_ms=_ms(job.started_at, finished_at),
            steps_ms=round(sum(cp.duration_ms for cp in checkpoints), 1),
        ),
    )


def save(objects: ObjectStore, provenance: Provenance, *, durable: bool = True) -> None:
    """durable=False: a later durable write to the same store carries it (see ObjectStore.put)."""
    objects.put(provenance_key(provenance.job_id), provenance.model_dump_json().encode(), durable=durable)


def load(objects: ObjectStore, job_id: str) -> Provenance | None:
    found = objects.get(provenance_key(job_id))
    return Provenance.model_validate_json(found.data) if found is not None else None
