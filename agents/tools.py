"""The agent's tools: one registry of each tool's OpenAI function spec together with its handler."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agents.state import AgentState
from shared.ports import KnowledgeIndex

MAX_READ_CHUNKS = 6  # read_document without chunk_id returns at most this many chunks
MAX_NOTE_CHARS = 1000


class ToolRefused(Exception):
    """The call cannot run; the message goes back to the model as the tool's answer."""


@dataclass
class Toolbox:
    index: KnowledgeIndex
    allowed: list[str]
    note: Callable[[str], None] | None = None
    # The job's knowledge scopes ([tenant, "shared"]): search and read_document see nothing else.
    # None reads every scope, for tools run outside a tenant's job (benchmarks, evaluation).
    scopes: list[str] | None = None

    def run(self, name: str, arguments: str, state: AgentState) -> str:
        """Run one tool call and return its answer (JSON text) for the model."""
        tool = TOOLS.get(name)
        if tool is None:
            raise ToolRefused(f"unknown tool {name!r}; available tools: {', '.join(self.allowed)}")
        if name not in self.allowed:
            raise ToolRefused(f"tool {name!r} is not allowed by this job's policy")
        try:
            args = json.loads(arguments or "{}")
        except json.JSONDecodeError as exc:
            raise ToolRefused(f"arguments are not valid JSON: {exc.msg}") from exc
        if not isinstance(args, dict):
            raise ToolRefused("arguments must be a JSON object")
        if tool.run is None:
            raise ToolRefused(f"{name} is handled by the agent loop")
        return tool.run(self, args, state)

    def search(self, args: dict[str, Any], state: AgentState) -> str:
        query = str(args.get("query", "")).strip()
        if not query:
            raise ToolRefused("query must not be empty")
        top = max(1, min(int(args.get("top") or 5), 10))
        hits = self.index.search(query, top=top, scopes=self.scopes)
        return json.dumps(
            {
                "results": [
                    h.model_dump(
                        include={"doc_id", "chunk_id", "title", "section", "page", "snippet"}, exclude_none=True
                    )
                    for h in hits
                ]
            },
            ensure_ascii=False,
        )

    def read(self, args: dict[str, Any], state: AgentState) -> str:
        doc_id = str(args.get("doc_id", ""))
        chunk_id = args.get("chunk_id")
        try:
            wanted = int(chunk_id) if chunk_id is not None else None
        except (TypeError, ValueError):
            raise ToolRefused("chunk_id must be an integer") from None
        # A chunk of another tenant reads as missing: the model learns nothing about what it cannot see.
        chunks = self.index.get_chunks(doc_id, wanted, scopes=self.scopes)
        if not chunks:
            raise ToolRefused(
                f"no document {doc_id!r}"
                + (f" chunk {chunk_id}" if chunk_id is not None else "")
                + " in this job's knowledge"
            )
        chunks = chunks[:MAX_READ_CHUNKS]
        for c in chunks:
            state.sources[c.key] = c
        # The text goes back as a JSON field: it is data to quote, never instructions to follow.
        return json.dumps(
            {
                "chunks": [
                    c.model_dump(
                        include={"doc_id", "chunk_id", "title", "section", "page", "content"}, exclude_none=True
                    )
                    for c in chunks
                ]
            },
            ensure_ascii=False,
        )

    def save_note(self, args: dict[str, Any], state: AgentState) -> str:
        text = str(args.get("text", "")).strip()[:MAX_NOTE_CHARS]
        if not text:
            raise ToolRefused("text must not be empty")
        state.notes.append(text)
        return json.dumps({"saved": True})


@dataclass(frozen=True)
class Tool:
    """One tool: what the model is told (description, JSON-schema parameters) and how it runs.

    `run` is None for the final tool, which the agent loop handles itself.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    run: Callable[[Toolbox, dict[str, Any], AgentState], str] | None

    def spec(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


FINAL_TOOL = "write_report"

# The one registry: a tool's spec and its handler are kept together, in the order the model sees them.
TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool(
            "search_knowledge",
            "Search the knowledge index. Returns passages with doc_id, chunk_id, title and a snippet.",
            {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "What to look for, in the question's language."},
                    "top": {"type": "integer", "minimum": 1, "maximum": 10, "default": 5},
                },
                "required": ["query"],
            },
            Toolbox.search,
        ),
        Tool(
            "read_document",
            "Read a document's chunk (or its first chunks) in full. Only text read here can be cited.",
            {
                "type": "object",
                "properties": {"doc_id": {"type": "string"}, "chunk_id": {"type": "integer"}},
                "required": ["doc_id"],
            },
            Toolbox.read,
        ),
        Tool(
            "save_note",
            "Save a short finding to the session's short-term memory for later jobs.",
            {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
            Toolbox.save_note,
        ),
        Tool(
            "write_report",
            (
                "Submit the final report in Markdown. Mark each claim with [n]; each citation n must quote, "
                "verbatim, text from a chunk you read with read_document."
            ),
            {
                "type": "object",
                "properties": {
                    "markdown": {"type": "string"},
                    "citations": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "n": {"type": "integer"},
                                "doc_id": {"type": "string"},
                                "chunk_id": {"type": "integer"},
                                "quote": {"type": "string", "description": "Exact sentence copied from the chunk."},
                            },
                            "required": ["n", "doc_id", "chunk_id", "quote"],
                        },
                    },
                },
                "required": ["markdown", "citations"],
            },
            None,
        ),
    )
}
SPECS: dict[str, dict[str, Any]] = {name: tool.spec()["function"] for name, tool in TOOLS.items()}


def tool_specs(allowed: list[str]) -> list[dict[str, Any]]:
    """OpenAI tool definitions for the tools the policy allows, in a stable order."""
    return [tool.spec() for name, tool in TOOLS.items() if name in allowed]
