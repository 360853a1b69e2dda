"""One step of the research agent: a model turn, or the tool calls of the last turn.

The step engine (shared/steps.py) decides *whether* a step runs and commits its result;
this module decides *what* the step does. It is pure domain: it receives ports.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol

from agents import citations, claims
from agents.prompts import MEMORY_ITEM_CHARS, MEMORY_TOTAL_CHARS, leaked_instructions, system_prompt, user_prompt
from agents.report_markdown import Delivered, inline_text
from agents.state import AgentState
from agents.tools import FINAL_TOOL, Toolbox, ToolRefused, tool_specs
from shared.contracts import ApprovalRequest, Citation, JobError, MemoryItem, Outcome, Policy, Report, Usage
from shared.ports import ChatModel, KnowledgeIndex
from shared.text import detect_language

MAX_NUDGES = 1  # a model that answers without write_report is reminded once
ELIDED = json.dumps(
    {"elided": "older tool output removed to fit the context budget; call read_document again to see it"}
)


class TokenCounter(Protocol):
    """Prompt tokens of chat messages plus the tool specs sent with them (shared.tokens.count_message_tokens).

    Counts add up: count(a + b) == count(a) + count(b) - count([]) (the reply priming counts once).
    """

    def __call__(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None) -> int: ...


@dataclass
class AgentContext:
    model: ChatModel
    index: KnowledgeIndex
    policy: Policy
    count_tokens: TokenCounter
    context_budget: int = 12_000
    approval: ApprovalRequest | None = None  # a human's decision on this step's tool calls, if one was asked
    report_link_hosts: tuple[str, ...] = ()  # hosts a report may link to besides its cited sources (REPORT_LINK_HOSTS)
    scopes: list[str] | None = None  # the job's knowledge scopes, [tenant, "shared"]; None: every scope


@dataclass
class StepResult:
    state: AgentState
    kind: str
    summary: str
    usage: Usage = field(default_factory=Usage)
    outcome: Outcome | None = None


def start(
    task: str,
    policy: Policy,
    recalled: list[MemoryItem],
    *,
    memory_item_chars: int = MEMORY_ITEM_CHARS,
    memory_total_chars: int = MEMORY_TOTAL_CHARS,
) -> AgentState:
    language = policy.language if policy.language != "auto" else detect_language(task)
    state = AgentState(task=task, language=language, recalled=recalled)
    # A fence no stored text can guess: memory is quoted between tags named with it.
    fence = f"memory-{secrets.token_hex(6)}"
    prompt = user_prompt(task, recalled, fence=fence, item_chars=memory_item_chars, total_chars=memory_total_chars)
    state.messages.append({"role": "user", "content": prompt})
    return state


def run_step(state: AgentState, ctx: AgentContext) -> StepResult:
    """Advance state by one step. It works on state in place: pass a copy you own (the engine
    passes the state it just loaded from the previous checkpoint)."""
    if state.pending_tool_calls():
        return _tool_step(state, ctx)
    return _model_step(state, ctx)


# --- model turns -------------------------------------------------------------------------------


def _model_step(state: AgentState, ctx: AgentContext) -> StepResult:
    system = {"role": "system", "content": system_prompt(ctx.policy, state.language)}
    specs = tool_specs(ctx.policy.allowed_tools)
    # The tool specs travel with every call, so they come out of the budget too.
    fixed = ctx.count_tokens([system], tools=specs)
    empty = ctx.count_tokens([])
    # Messages never change once appended: count each once, and keep its count beside it in the state.
    known = state.message_tokens if len(state.message_tokens) <= len(state.messages) else []
    costs = known + [ctx.count_tokens([m]) - empty for m in state.messages[len(known) :]]
    kept, conversation = fit_to_budget_counted(
        state.messages, ctx.context_budget - fixed, ctx.count_tokens, costs=costs
    )
    messages = [system, *kept]
    # Counts add up message by message: the prompt is the fixed part plus the conversation, less the
    # reply priming both of them include.
    needed = fixed + conversation - empty
    if needed > ctx.context_budget:
        # Only the newest turn's tool output and the conversation's skeleton are left; sending more than the
        # budget would break the promise the operator configured, so the job stops before spending anything.
        error = JobError(
            reason="context_budget",
            detail=(
                f"the prompt needs {needed} tokens even with older tool output elided; CONTEXT_BUDGET_TOKENS is "
                f"{ctx.context_budget}: raise it, or narrow the task"
            ),
        )
        return StepResult(
            state, "model", "prompt over the context budget", outcome=Outcome(status="failed", error=error)
        )
    turn = ctx.model.complete(messages, specs)
    state.message_tokens = costs  # only once the turn happened: a failed call leaves the state as it was
    message: dict[str, Any] = {"role": "assistant", "content": turn.content}
    if turn.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in turn.tool_calls
        ]
    state.messages.append(message)
    if turn.tool_calls:
        names = ", ".join(c.name for c in turn.tool_calls)
        return StepResult(state, "model", f"model asked for {names}", turn.usage)
    if state.nudges < MAX_NUDGES:
        state.nudges += 1
        state.messages.append({"role": "user", "content": "Submit your answer with the write_report tool."})
        return StepResult(state, "model", "model answered without write_report; reminded", turn.usage)
    error = JobError(reason="no_report", detail="the model did not call write_report")
    return StepResult(state, "model", "model gave no report", turn.usage, Outcome(status="failed", error=error))


def fit_to_budget(messages: list[dict[str, Any]], budget: int, count: TokenCounter) -> list[dict[str, Any]]:
    """Keep the prompt within budget by eliding whole old tool outputs, oldest first.

    A tool output is replaced entirely, never cut mid-text, so no quote is half-present;
    the chunks stay in state.sources and can be read again. The answers to the latest
    assistant turn are never elided: they are what the model must act on now.
    """
    return fit_to_budget_counted(messages, budget, count)[0]


def fit_to_budget_counted(
    messages: list[dict[str, Any]], budget: int, count: TokenCounter, *, costs: list[int] | None = None
) -> tuple[list[dict[str, Any]], int]:
    """fit_to_budget, and the tokens of what it kept (framing included).

    Each message is counted once, and an elision adjusts the total by the difference, so the
    cost is linear in the conversation's length however many outputs are elided (a recount
    after every elision made long jobs quadratic). This relies on counts adding up message by
    message, as shared.tokens.count_message_tokens does. costs: each message's count, when the
    caller kept them (the state does, message by message); without them, every message is counted.
    """
    empty = count([])
    if costs is None or len(costs) != len(messages):
        costs = [count([m]) - empty for m in messages]
    total = empty + sum(costs)
    if total <= budget:
        return messages, total
    trimmed = [dict(m) for m in messages]
    last_turn = max((i for i, m in enumerate(trimmed) if m.get("role") == "assistant"), default=len(trimmed))
    for i, m in enumerate(trimmed[:last_turn]):
        if m.get("role") != "tool" or m.get("content") == ELIDED:
            continue
        m["content"] = ELIDED
        total += (count([m]) - empty) - costs[i]
        if total <= budget:
            break
    return trimmed, total


# --- tool steps --------------------------------------------------------------------------------


def _tool_step(state: AgentState, ctx: AgentContext) -> StepResult:
    toolbox = Toolbox(index=ctx.index, allowed=ctx.policy.allowed_tools, scopes=ctx.scopes)
    calls = state.pending_tool_calls()
    done: list[str] = []
    report_call: dict[str, Any] | None = None
    approval = ctx.approval
    for call in calls:
        name = call["function"]["name"]
        decided = approval is not None and name in approval.pending
        if decided and approval is not None and approval.decision != "approved":
            # The human said no: the model is told so (the comment is data) and goes on without the call.
            answer = json.dumps(
                {"error": "a human reviewer rejected this call", "reviewer_comment": approval.comment or ""},
                ensure_ascii=False,
            )
            state.messages.append({"role": "tool", "tool_call_id": call["id"], "content": answer})
            done.append(f"{name} (rejected)")
            continue
        if name == FINAL_TOOL and name in ctx.policy.allowed_tools:
            report_call = call
            continue
        try:
            answer = toolbox.run(name, call["function"].get("arguments", ""), state)
            done.append(name)
        except ToolRefused as refusal:
            answer = json.dumps({"error": str(refusal)}, ensure_ascii=False)
            done.append(f"{name} (refused)")
        if decided and approval is not None and approval.comment:
            answer = _with_comment(answer, approval.comment)
        state.messages.append({"role": "tool", "tool_call_id": call["id"], "content": answer})
    if report_call is None:
        return StepResult(state, "tools", "ran " + ", ".join(done))
    return _report(state, ctx, report_call)


def _with_comment(answer: str, comment: str) -> str:
    """The tool's answer with the approver's comment beside it, as a field: data, never instructions."""
    try:
        body = json.loads(answer)
    except json.JSONDecodeError:
        body = {"result": answer}
    if not isinstance(body, dict):
        body = {"result": body}
    return json.dumps({"reviewer_comment": comment, **body}, ensure_ascii=False)


def _report(state: AgentState, ctx: AgentContext, call: dict[str, Any]) -> StepResult:
    try:
        args = json.loads(call["function"].get("arguments") or "{}")
        markdown = str(args.get("markdown", ""))
        proposed = list(args.get("citations") or [])
    except (json.JSONDecodeError, AttributeError, TypeError):
        markdown, proposed = "", []
    check = citations.verify(markdown, proposed, state.sources)
    # A document may have talked the model into repeating its instructions; the report never carries them.
    leaks = leaked_instructions(markdown, system_prompt(ctx.policy, state.language))
    if (check.failed or leaks) and state.repairs == 0 and markdown:
        state.repairs += 1
        feedback: dict[str, Any] = {"error": "the report cannot be accepted as written"}
        if check.failed:
            feedback["failed"] = check.failed
            feedback["fix"] = (
                "quote sentences verbatim from chunks you read with read_document, or drop the "
                "claim; then call write_report again"
            )
        if leaks:
            feedback["instructions_repeated"] = "the report repeats your instructions; remove them and resubmit"
        state.messages.append(
            {"role": "tool", "tool_call_id": call["id"], "content": json.dumps(feedback, ensure_ascii=False)}
        )
        return StepResult(
            state,
            "tools",
            f"report had {len(check.failed)} unverified citation(s)"
            + (" and repeated its instructions" if leaks else "")
            + "; asked to repair",
        )

    text = _without_instructions(check.markdown, leaks, system_prompt(ctx.policy, state.language))
    text, kept = citations.finalize(text, check.citations)
    delivered = _delivered(text, kept, state, ctx)
    for _ in range(3):
        if len(delivered.markdown) <= ctx.policy.max_report_chars:
            break
        # Cut between lines, then drop the citations whose markers were cut off: never half a claim or marker.
        # Delivery again: what it did is idempotent, and the sentences of a dropped citation are now uncited.
        text, kept = citations.finalize(_shorten(delivered.markdown, ctx.policy.max_report_chars), kept)
        delivered = _delivered(text, kept, state, ctx)
    state.removed_citations.extend(check.failed)
    state.report = Report(
        markdown=delivered.markdown,
        citations=kept,
        language=state.language,
        model=ctx.model.name,
        offline_model=ctx.model.offline,
        removed_citations=state.removed_citations,
        safety=delivered.removed,
    )
    state.messages.append({"role": "tool", "tool_call_id": call["id"], "content": json.dumps({"accepted": True})})
    summary = f"report accepted with {len(kept)} verified citation(s)"
    if check.failed:
        summary += f", {len(check.failed)} removed"
    if leaks:
        summary += "; repeated instructions removed"
    summary += _safety_summary(delivered.removed)
    policy = ctx.policy
    if policy.require_citations and len(kept) < policy.min_citations:
        error = JobError(
            reason="citations_missing",
            detail=f"{len(kept)} verified citation(s), policy requires {policy.min_citations}; report kept",
        )
        return StepResult(state, "tools", summary, outcome=Outcome(status="failed", error=error))
    return StepResult(state, "tools", summary, outcome=Outcome(status="succeeded"))


def _delivered(markdown: str, kept: list[Citation], state: AgentState, ctx: AgentContext) -> Delivered:
    """The report's Markdown as delivered: safe to render, uncited sentences handled by the job's policy."""
    return claims.deliver(
        markdown, kept, uncited=ctx.policy.uncited, language=state.language, link_hosts=ctx.report_link_hosts
    )


def _safety_summary(removed: dict[str, int]) -> str:
    unsafe = sum(n for kind, n in removed.items() if not kind.startswith("uncited"))
    parts = [f"{unsafe} unsafe item(s) removed"] if unsafe else []
    for kind in ("uncited_marked", "uncited_dropped"):
        if removed.get(kind):
            parts.append(f"{removed[kind]} uncited sentence(s) {kind.split('_')[1]}")
    return "; " + ", ".join(parts) if parts else ""


def _without_instructions(markdown: str, leaks: list[str], prompt: str) -> str:
    """The markdown without its lines that repeat the prompt (and the prompt's short lines, such as "Rules:")."""
    if not leaks:
        return markdown
    folded = [f.casefold() for f in leaks]
    prompt_lines = {" ".join(line.split()).casefold() for line in prompt.splitlines()} - {""}

    def repeats(line: str) -> bool:
        line = " ".join(line.split()).casefold()
        return line in prompt_lines or any(f in line for f in folded)

    return "".join(line for line in markdown.splitlines(keepends=True) if not repeats(line))


_PARTIAL_MARKER = re.compile(r"\[\d*$")


def _shorten(text: str, limit: int) -> str:
    """At most limit characters, cut at a line end (else a space), never inside a citation marker."""
    head = text[:limit]
    cut = head.rfind("\n")
    if cut <= 0:  # one long paragraph: a word boundary is the best left
        cut = head.rfind(" ")
    head = head[:cut] if cut > 0 else head
    return _PARTIAL_MARKER.sub("", head).rstrip() + "\n"


# --- a job stopped before its report -----------------------------------------------------------

_PARTIAL = {
    "en": (
        "Partial findings",
        "The job stopped before writing its report ({why}). Nothing below is a verified "
        "claim; these are the sources it had read:",
        "No source had been read.",
    ),
    "ja": (
        "途中までの調査結果",
        "ジョブはレポートを書く前に停止しました（{why}）。以下は検証済みの記述ではなく、"
        "それまでに読んだ出典の一覧です。",
        "読んだ出典はありません。",
    ),
}


def partial_report(state: AgentState, why: str, model: ChatModel) -> Report:
    """What a stopped job had read, said plainly: a list of sources, no claims and no citations."""
    heading, intro, none = _PARTIAL.get(state.language, _PARTIAL["en"])
    lines = [f"## {heading}", "", intro.format(why=why), ""]
    # Titles come from documents: escaped as text, and the whole checked like any report (it claims nothing).
    lines += [f"- {inline_text(s.title)} ({s.doc_id}#{s.chunk_id})" for s in state.sources.values()] or [none]
    delivered = claims.deliver("\n".join(lines) + "\n", [], uncited="keep", language=state.language, judge_claims=False)
    return Report(
        markdown=delivered.markdown,
        safety=delivered.removed,
        citations=[],
        language=state.language,
        model=model.name,
        offline_model=model.offline,
        removed_citations=state.removed_citations,
    )
