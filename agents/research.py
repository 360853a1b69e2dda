"""One step of the research agent: a model turn, or the tool calls of the last turn.

The step engine (shared/steps.py) decides *whether* a step runs and commits its result;
this module decides *what* the step does. It is pure domain: it receives ports.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agents import citations
from agents.prompts import system_prompt, user_prompt
from agents.state import AgentState
from agents.tools import FINAL_TOOL, Toolbox, ToolRefused, tool_specs
from shared.contracts import JobError, Outcome, Policy, Report, Usage
from shared.ports import ChatModel, KnowledgeIndex
from shared.text import detect_language

MAX_NUDGES = 1  # a model that answers without write_report is reminded once


@dataclass
class AgentContext:
    model: ChatModel
    index: KnowledgeIndex
    policy: Policy
    count_tokens: Callable[[list[dict[str, Any]]], int]
    context_budget: int = 12_000


@dataclass
class StepResult:
    state: AgentState
    kind: str
    summary: str
    usage: Usage = field(default_factory=Usage)
    outcome: Outcome | None = None


def start(task: str, policy: Policy, recalled: list[str]) -> AgentState:
    language = policy.language if policy.language != "auto" else detect_language(task)
    state = AgentState(task=task, language=language, recalled=recalled)
    state.messages.append({"role": "user", "content": user_prompt(task, recalled)})
    return state


def run_step(state: AgentState, ctx: AgentContext) -> StepResult:
    state = state.model_copy(deep=True)
    if state.pending_tool_calls():
        return _tool_step(state, ctx)
    return _model_step(state, ctx)


# --- model turns -------------------------------------------------------------------------------


def _model_step(state: AgentState, ctx: AgentContext) -> StepResult:
    system = {"role": "system", "content": system_prompt(ctx.policy, state.language)}
    messages = [system, *fit_to_budget(state.messages, ctx.context_budget - ctx.count_tokens([system]),
                                       ctx.count_tokens)]
    turn = ctx.model.complete(messages, tool_specs(ctx.policy.allowed_tools))
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


def fit_to_budget(
    messages: list[dict[str, Any]], budget: int, count: Callable[[list[dict[str, Any]]], int]
) -> list[dict[str, Any]]:
    """Keep the prompt within budget by eliding whole old tool outputs, oldest first.

    A tool output is replaced entirely, never cut mid-text, so no quote is half-present;
    the chunks stay in state.sources and can be read again.
    """
    if count(messages) <= budget:
        return messages
    trimmed = [dict(m) for m in messages]
    tool_positions = [i for i, m in enumerate(trimmed) if m.get("role") == "tool"]
    for i in tool_positions[:-1]:  # the newest tool output is what the model must act on
        trimmed[i]["content"] = json.dumps(
            {"elided": "older tool output removed to fit the context budget; call read_document again to see it"}
        )
        if count(trimmed) <= budget:
            break
    return trimmed


# --- tool steps --------------------------------------------------------------------------------


def _tool_step(state: AgentState, ctx: AgentContext) -> StepResult:
    toolbox = Toolbox(index=ctx.index, allowed=ctx.policy.allowed_tools)
    calls = state.pending_tool_calls()
    done: list[str] = []
    report_call: dict[str, Any] | None = None
    for call in calls:
        name = call["function"]["name"]
        if name == FINAL_TOOL and name in ctx.policy.allowed_tools:
            report_call = call
            continue
        try:
            answer = toolbox.run(name, call["function"].get("arguments", ""), state)
            done.append(name)
        except ToolRefused as refusal:
            answer = json.dumps({"error": str(refusal)}, ensure_ascii=False)
            done.append(f"{name} (refused)")
        state.messages.append({"role": "tool", "tool_call_id": call["id"], "content": answer})
    if report_call is None:
        return StepResult(state, "tools", "ran " + ", ".join(done))
    return _report(state, ctx, report_call)


def _report(state: AgentState, ctx: AgentContext, call: dict[str, Any]) -> StepResult:
    try:
        args = json.loads(call["function"].get("arguments") or "{}")
        markdown = str(args.get("markdown", ""))
        proposed = list(args.get("citations") or [])
    except (json.JSONDecodeError, AttributeError, TypeError):
        markdown, proposed = "", []
    check = citations.verify(markdown, proposed, state.sources)
    if check.failed and state.repairs == 0 and markdown:
        state.repairs += 1
        feedback = {
            "error": "some citations could not be verified against the chunks you read",
            "failed": check.failed,
            "fix": "quote sentences verbatim from chunks you read with read_document, or drop the claim; "
                   "then call write_report again",
        }
        state.messages.append({"role": "tool", "tool_call_id": call["id"],
                               "content": json.dumps(feedback, ensure_ascii=False)})
        return StepResult(state, "tools", f"report had {len(check.failed)} unverified citation(s); asked to repair")

    text, kept = citations.finalize(check.markdown, check.citations)
    text = text[: ctx.policy.max_report_chars]
    state.removed_citations.extend(check.failed)
    state.report = Report(
        markdown=text, citations=kept, language=state.language, model=ctx.model.name,
        offline_model=ctx.model.offline, removed_citations=state.removed_citations,
    )
    state.messages.append({"role": "tool", "tool_call_id": call["id"], "content": json.dumps({"accepted": True})})
    summary = f"report accepted with {len(kept)} verified citation(s)"
    if check.failed:
        summary += f", {len(check.failed)} removed"
    policy = ctx.policy
    if policy.require_citations and len(kept) < policy.min_citations:
        error = JobError(
            reason="citations_missing",
            detail=f"{len(kept)} verified citation(s), policy requires {policy.min_citations}; report kept",
        )
        return StepResult(state, "tools", summary, outcome=Outcome(status="failed", error=error))
    return StepResult(state, "tools", summary, outcome=Outcome(status="succeeded"))
