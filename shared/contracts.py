"""The pydantic contracts every layer shares: jobs, steps, checkpoints, documents, reports.

These are plain data. They carry no SDK types, so the domain, the adapters and
the API can all speak them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

JobStatus = Literal["queued", "running", "waiting_for_approval", "succeeded", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

# Azure AI Search keys allow letters, digits, '_', '-' and '='; we keep doc ids to that
# alphabet so a chunk key is the same string in every index implementation.
DOC_ID_PATTERN = r"^[A-Za-z0-9_\-=]{1,100}$"
_DOC_ID_RE = re.compile(DOC_ID_PATTERN)


def utcnow() -> datetime:
    return datetime.now(UTC)


def plain_text(value: str) -> str:
    """Refuse NUL and lone surrogates: no caller means them, and neither can be stored or encoded everywhere.

    JSON lets a client send "\\ud800" or "\\u0000"; UTF-8 cannot encode the first, and SQLite text, blob
    names and C libraries cut strings at the second. Refused where a request enters (422), such a string
    never reaches a store, a log line or a problem detail.
    """
    if "\x00" in value:
        raise ValueError("must not contain NUL (U+0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must not contain lone surrogates (U+D800-U+DFFF); send valid Unicode text") from None
    return value


Text = Annotated[str, AfterValidator(plain_text)]
"""A string a request may carry: any Unicode text but NUL and lone surrogates (see plain_text)."""


class Usage(BaseModel):
    """Model token usage, as the API's usage field reports it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
        )


UncitedPolicy = Literal["keep", "mark", "drop"]
# From the least to the most careful: a job may ask for a stricter handling than its tenant's, never a laxer.
UNCITED_ORDER: tuple[UncitedPolicy, ...] = ("keep", "mark", "drop")


class Policy(BaseModel):
    """What a job may do. Settings give defaults, tenants narrow them, jobs narrow further."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int = Field(30, ge=1, le=500, description="Steps after which the job stops with policy_limit.")
    max_tokens: int = Field(200_000, ge=1, description="Model tokens (prompt + completion) one job may spend.")
    allowed_tools: list[Text] = Field(
        default_factory=lambda: ["search_knowledge", "read_document", "save_note", "write_report"],
        description="Tools the agent may call; others are refused and the model is told.",
    )
    require_citations: bool = Field(
        True, description="Fail with citations_missing when fewer than min_citations verify."
    )
    min_citations: int = Field(1, ge=0, le=100)
    max_report_chars: int = Field(20_000, ge=200, le=200_000)
    language: Literal["auto", "en", "ja"] = Field("auto", description="Report language; auto follows the question.")
    approval: Approval = Field(
        "none",
        description='When a human must approve: "none", "before_report" (the final report waits), or '
        '{"tools": [...]} (calls of the named tools wait).',
    )
    approval_timeout_seconds: int = Field(
        86_400, ge=1, le=30 * 86_400, description="A job waiting this long for approval fails with approval_timeout."
    )
    mode: Literal["standard", "deep"] = Field(
        "standard",
        description="deep: plan sub-questions, research each as a child job, then report a section per sub-question.",
    )
    max_subquestions: int = Field(5, ge=1, le=10, description="deep mode: child jobs at most.")
    fail_on_child_failure: bool = Field(
        False, description="deep mode: fail the job when any sub-question fails (else the failure is reported)."
    )
    uncited: UncitedPolicy = Field(
        "mark",
        description="A report sentence no verified citation backs: keep it, mark it visibly (unverified), or drop "
        "it. A job may ask for a stricter handling than its tenant's (keep < mark < drop), never a laxer one.",
    )


class ToolApproval(BaseModel):
    """Calls of these tools wait for a human before they run."""

    model_config = ConfigDict(extra="forbid")

    tools: list[Text] = Field(min_length=1, description="Tool names, e.g. read_document, write_report.")


Approval = Literal["none", "before_report"] | ToolApproval


def approval_needed(approval: Approval, tool_names: list[str]) -> list[str]:
    """The tool calls among tool_names that this approval policy makes wait for a human."""
    if approval == "none":
        return []
    if approval == "before_report":
        return [n for n in tool_names if n == "write_report"]
    return [n for n in tool_names if n in approval.tools]


class PolicyOverrides(BaseModel):
    """A job's requested policy changes; every field optional, checked against the tenant's limits."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int | None = Field(None, ge=1, le=500)
    max_tokens: int | None = Field(None, ge=1)
    allowed_tools: list[Text] | None = None
    require_citations: bool | None = None
    min_citations: int | None = Field(None, ge=0, le=100)
    max_report_chars: int | None = Field(None, ge=200, le=200_000)
    language: Literal["auto", "en", "ja"] | None = None
    approval: Approval | None = None
    approval_timeout_seconds: int | None = Field(None, ge=1, le=30 * 86_400)
    mode: Literal["standard", "deep"] | None = None
    max_subquestions: int | None = Field(None, ge=1, le=10)
    fail_on_child_failure: bool | None = None
    uncited: UncitedPolicy | None = None


class StepMessage(BaseModel):
    """The claim-check a queue message carries: which job, which step. State lives in storage."""

    job_id: str
    step: int = Field(ge=1)
    attempt: int = Field(0, ge=0, description="Reschedules of this step after transient model errors.")
    origin: str | None = Field(None, description="Message id of the re-submission this delivery descends from.")
    purpose: Literal["step", "approval_deadline"] = Field(
        "step", description="approval_deadline: end the job if the approval after step-1 is still pending."
    )

    @property
    def message_id(self) -> str:
        # A reschedule is a new message: duplicate detection would drop a second "{job_id}:{step}".
        # Re-submitted steps carry their own id as origin, so their reschedules get fresh ids too.
        base = self.origin or f"{self.job_id}:{self.step}"
        return f"{base}:a{self.attempt}" if self.attempt else base


class JobError(BaseModel):
    reason: str = Field(description="Machine-readable cause, e.g. policy_limit, citations_missing, model_rejected.")
    detail: str = ""


# The broker's reason for a message that used up its deliveries (Service Bus's word; the embedded queue's too).
MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"

FailureCause = Literal["transient", "lost_lock", "permanent", "poison", "budget", "policy"]
RETRYABLE_CAUSES: frozenset[str] = frozenset({"transient", "lost_lock"})


class DeadLetterNote(BaseModel):
    """Why a step of the job is about to be (or was) dead-lettered, written where the failure was raised."""

    step: int
    delivery_count: int = 0
    reason: str = Field(MAX_DELIVERY_COUNT_EXCEEDED, description="The broker's dead-letter reason.")
    cause: FailureCause | None = Field(
        None,
        description="transient/lost_lock (worth another try) or permanent/poison/budget/policy (not); "
        "classified by exception type where the step failed.",
    )
    description: str = Field("", description="The exception of the step's last delivery.")
    at: datetime = Field(default_factory=lambda: utcnow())
    handled: str | None = Field(None, description="The re-submission log entry that handled it.")
    action: str | None = Field(None, description="What the sweep or an operator did with it.")
    resubmitted_as: str | None = Field(None, description="The message id it was re-submitted as.")


class StepSummary(BaseModel):
    """One line of progress per committed step, shown by GET /api/jobs/{id}."""

    step: int
    kind: str
    summary: str
    tokens: int = 0
    duration_ms: float = 0.0
    at: datetime


class ApprovalRequest(BaseModel):
    """A human decision the job waits for (or waited for) after one of its steps."""

    after_step: int = Field(description="The committed step whose tool calls wait; step after_step+1 runs them.")
    pending: list[str] = Field(description="What waits: the tool calls' names (write_report: the final report).")
    requested_at: datetime = Field(default_factory=utcnow)
    deadline: datetime
    decision: Literal["approved", "rejected", "timed_out"] | None = None
    comment: str | None = Field(None, description="The approver's comment; the agent sees it as data.")
    decided_by: str | None = None
    decided_at: datetime | None = None


class Job(BaseModel):
    """The job record: a projection of the job's checkpoints plus the request that created it."""

    id: str
    tenant: str
    task: str
    session_id: str | None = None
    policy: Policy
    status: JobStatus = "queued"
    step: int = Field(0, description="Last committed step.")
    progress: list[StepSummary] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    error: JobError | None = None
    cancel_requested: bool = False
    resubmissions: int = Field(0, description="Times an operator or the sweep re-submitted a dead-lettered step.")
    dead_letter: DeadLetterNote | None = Field(None, description="Last dead-lettering of this job's step, if any.")
    repairs: int = Field(0, description="Times the stuck-job detector re-sent a next step that was lost.")
    idempotency_key: str | None = None
    callback_url: str | None = Field(None, description="Where signed webhooks for this job are delivered.")
    schedule_id: str | None = Field(None, description="The schedule that submitted this job, if any.")
    approvals: list[ApprovalRequest] = Field(default_factory=list, description="Approvals asked for, oldest first.")
    parent_id: str | None = Field(None, description="deep mode: the job this one answers a sub-question of.")
    children: list[str] = Field(default_factory=list, description="deep mode: the sub-question jobs, in plan order.")
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def pending_approval(self) -> ApprovalRequest | None:
        """The approval the job waits for now, if any."""
        last = self.approvals[-1] if self.approvals else None
        return last if last is not None and last.decision is None and not self.finished else None


class Outcome(BaseModel):
    """How a terminal checkpoint ended its job."""

    status: Literal["succeeded", "failed", "cancelled"]
    error: JobError | None = None


class Checkpoint(BaseModel):
    """Immutable result of step n: the agent state after it, its usage, and whether the job ended."""

    job_id: str
    step: int
    kind: str
    summary: str
    state: dict[str, Any]
    usage: Usage = Field(default_factory=Usage, description="This step's model usage.")
    total_usage: Usage = Field(default_factory=Usage, description="Usage of steps 1..n, so redelivery never recounts.")
    outcome: Outcome | None = None
    duration_ms: float = 0.0
    created_at: datetime = Field(default_factory=utcnow)
    # Whose ledger counts this step (the job's tenant and the month it was created), so the usage
    # of a committed step is accounted even when the job record itself cannot be read.
    tenant: str | None = None
    ledger_month: str | None = None


class Document(BaseModel):
    """A document submitted for indexing."""

    model_config = ConfigDict(extra="forbid")

    id: Text = Field(pattern=DOC_ID_PATTERN, description="Letters, digits, '_', '-', '='.")
    title: Text = Field(min_length=1, max_length=500)
    url: Text | None = Field(None, max_length=2000)
    content: Text = Field(min_length=1)


def valid_doc_id(doc_id: str) -> bool:
    return bool(_DOC_ID_RE.match(doc_id))


# The scope every tenant reads besides its own; documents published in it are visible to all tenants.
SHARED_SCOPE = "shared"


def knowledge_scopes(tenant: str) -> list[str]:
    """The scopes a tenant's callers and jobs read: the tenant's own and the shared one."""
    return [tenant, SHARED_SCOPE] if tenant != SHARED_SCOPE else [SHARED_SCOPE]


def chunk_key(doc_id: str, chunk_id: int) -> str:
    return f"{doc_id}--c{chunk_id:04d}"


class Chunk(BaseModel):
    """One indexed passage of a document."""

    doc_id: str
    chunk_id: int
    title: str
    url: str | None = None
    content: str
    section: str | None = Field(None, description="The heading the passage sits under, if any.")
    page: int | None = Field(None, description="The page (1-based) the passage starts on, for PDFs.")
    version: str | None = Field(None, description="Content hash of the document version the passage is from.")
    scope: str = Field(SHARED_SCOPE, description='The tenant that owns the passage, or "shared" (every tenant).')

    @property
    def key(self) -> str:
        return chunk_key(self.doc_id, self.chunk_id)


class SearchHit(BaseModel):
    doc_id: str
    chunk_id: int
    title: str
    url: str | None = None
    score: float
    snippet: str
    section: str | None = None
    page: int | None = None
    version: str | None = None
    scope: str = Field(SHARED_SCOPE, description='The tenant that owns the passage, or "shared".')


class Citation(BaseModel):
    n: int
    doc_id: str
    chunk_id: int
    title: str
    url: str | None = None
    quote: str = Field(description="Exact text of the chunk at start..end.")
    start: int
    end: int
    version: str | None = Field(None, description="Content hash of the document version quoted.")
    page: int | None = Field(None, description="Page the quoted passage starts on (PDFs).")
    section: str | None = Field(None, description="Heading the quoted passage sits under.")


class MemoryItem(BaseModel):
    """One entry of a session's short-term memory: what a job found or noted, and where it came from.

    Memory is data: a later job sees it fenced, with this origin, never as instructions.
    """

    text: str
    at: float = Field(0.0, description="When it was remembered (epoch seconds).")
    job_id: str | None = Field(None, description="The job that found or noted it (unknown for older entries).")
    kind: Literal["finding", "note"] = Field(
        "finding", description="finding: a verified quote of a report; note: text the agent saved with save_note."
    )


class Report(BaseModel):
    markdown: str
    citations: list[Citation] = Field(default_factory=list)
    language: str = "en"
    model: str = ""
    offline_model: bool = False
    removed_citations: list[dict[str, Any]] = Field(
        default_factory=list, description="Citations that failed verification and were taken out."
    )
    safety: dict[str, int] = Field(
        default_factory=dict,
        description="What delivery took out of the model's Markdown or marked, by kind: raw_html, link, image, "
        "bare_url, reference_definition, uncited_marked, uncited_dropped.",
    )
