"""A small ChatModel for domain tests: it plays scripted turns in order and records what it was sent.

A real implementation of the port (name, offline, complete, ping), not a mock: the domain code
under test cannot tell it from the offline model or the OpenAI adapter.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from shared.contracts import Usage
from shared.ports import ModelTurn, ToolCall


@dataclass
class SentRequest:
    """One complete() call as the model received it."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]

    @property
    def tool_names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools]


@dataclass
class ScriptedModel:
    """Answers complete() with the next scripted ModelTurn, or raises the next scripted exception."""

    script: list[ModelTurn | Exception] = field(default_factory=list)
    name: str = "scripted-fake"
    offline: bool = True
    requests: list[SentRequest] = field(default_factory=list)

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> ModelTurn:
        # Deep copies: the caller may change its lists after the call; the record must not move.
        self.requests.append(SentRequest(copy.deepcopy(messages), copy.deepcopy(tools)))
        if not self.script:
            raise AssertionError(f"ScriptedModel: script exhausted after {len(self.requests) - 1} turn(s)")
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def ping(self) -> None:
        return None


def calls(
    *tool_calls: tuple[str, dict[str, Any]], prompt_tokens: int = 100, completion_tokens: int = 10, turn: int = 0
) -> ModelTurn:
    """A turn that calls tools; ids are call_{turn}_{i} like the offline model's."""
    return ModelTurn(
        content=None,
        tool_calls=[
            ToolCall(id=f"call_{turn}_{i}", name=name, arguments=json.dumps(args, ensure_ascii=False))
            for i, (name, args) in enumerate(tool_calls)
        ],
        usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens),
        model="scripted-fake",
    )


def answer(content: str, *, prompt_tokens: int = 100, completion_tokens: int = 10) -> ModelTurn:
    """A turn that answers in text, without calling a tool."""
    return ModelTurn(
        content=content, tool_calls=[], usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    )


def report(
    markdown: str,
    citations: list[dict[str, Any]],
    *,
    turn: int = 0,
    prompt_tokens: int = 100,
    completion_tokens: int = 10,
) -> ModelTurn:
    """A write_report turn."""
    return calls(
        ("write_report", {"markdown": markdown, "citations": citations}),
        turn=turn,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )
