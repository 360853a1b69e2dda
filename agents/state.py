"""The research agent's state, carried from checkpoint to checkpoint."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator

from shared.contracts import Chunk, MemoryItem, Report


class AgentState(BaseModel):
    task: str
    language: str = "en"
    messages: list[dict[str, Any]] = Field(
        default_factory=list, description="OpenAI-format turns after the system prompt."
    )
    message_tokens: list[int] = Field(
        default_factory=list,
        description="Prompt tokens of messages[i], counted once when first sent (a prefix of messages).",
    )
    sources: dict[str, Chunk] = Field(
        default_factory=dict, description="chunk key -> chunk read in this job: the only text a citation may quote"
    )
    notes: list[str] = Field(default_factory=list)
    recalled: list[MemoryItem] = Field(
        default_factory=list, description="Session memory seen at the start of the job (fenced as data in the prompt)."
    )
    repairs: int = 0
    nudges: int = 0
    report: Report | None = None
    subquestions: list[str] = Field(default_factory=list, description="deep mode: the plan, one child job each.")
    removed_citations: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("recalled", mode="before")
    @classmethod
    def _plain_texts(cls, value: Any) -> Any:
        # Checkpoints written before memory kept its origin hold plain strings.
        if isinstance(value, list):
            return [{"text": v} if isinstance(v, str) else v for v in value]
        return value

    def pending_tool_calls(self) -> list[dict[str, Any]]:
        """Tool calls of the last assistant turn that have no tool answer yet."""
        if not self.messages:
            return []
        last = self.messages[-1]
        if last.get("role") != "assistant":
            return []
        return list(last.get("tool_calls") or [])
