"""The agent's tools run directly against the embedded index: what each returns, records and refuses."""

from __future__ import annotations

import json

import pytest

from agents.state import AgentState
from agents.tools import FINAL_TOOL, MAX_NOTE_CHARS, MAX_READ_CHUNKS, SPECS, Toolbox, ToolRefused, tool_specs
from shared.adapters.local.search import LocalKnowledgeIndex
from tests.unit.library import chunk

ALL_TOOLS = list(SPECS)


@pytest.fixture
def toolbox(index: LocalKnowledgeIndex) -> Toolbox:
    return Toolbox(index=index, allowed=ALL_TOOLS)


@pytest.fixture
def state() -> AgentState:
    return AgentState(task="How do steps commit?")


def test_specs_follow_the_policy_in_a_stable_order() -> None:
    specs = tool_specs(["write_report", "read_document", "no_such_tool"])

    assert [s["function"]["name"] for s in specs] == ["read_document", "write_report"]
    assert all(s["type"] == "function" and s["function"]["parameters"]["type"] == "object" for s in specs)
    assert [s["function"]["name"] for s in tool_specs(ALL_TOOLS)] == [
        "search_knowledge",
        "read_document",
        "save_note",
        FINAL_TOOL,
    ]


def test_search_returns_passages_without_their_full_text(toolbox: Toolbox, state: AgentState) -> None:
    answer = json.loads(toolbox.run("search_knowledge", '{"query": "checkpoint create-only"}', state))

    first = answer["results"][0]
    assert (first["doc_id"], first["chunk_id"]) == ("engine", 0)
    assert set(first) == {"doc_id", "chunk_id", "title", "snippet"}
    assert state.sources == {}  # a search result is not something read: it cannot be cited


@pytest.mark.parametrize(("top", "expected"), [(2, 2), (50, 8), (0, 5)])
def test_search_top_is_clamped(toolbox: Toolbox, state: AgentState, top: int, expected: int) -> None:
    # Eight tides chunks match; top is held within 1..10, and a missing or zero top means 5.
    answer = json.loads(toolbox.run("search_knowledge", json.dumps({"query": "tidal kelp", "top": top}), state))

    assert len(answer["results"]) == expected


def test_read_records_what_was_read_for_citing(toolbox: Toolbox, state: AgentState) -> None:
    answer = json.loads(toolbox.run("read_document", '{"doc_id": "engine", "chunk_id": 1}', state))

    expected = chunk("engine", 1)
    assert answer == {
        "chunks": [{"doc_id": "engine", "chunk_id": 1, "title": expected.title, "content": expected.content}]
    }
    assert state.sources == {expected.key: expected}


def test_read_without_chunk_id_reads_at_most_the_first_chunks(toolbox: Toolbox, state: AgentState) -> None:
    answer = json.loads(toolbox.run("read_document", '{"doc_id": "tides"}', state))

    assert [c["chunk_id"] for c in answer["chunks"]] == list(range(MAX_READ_CHUNKS))
    assert sorted(state.sources) == [f"tides--c{n:04d}" for n in range(MAX_READ_CHUNKS)]


def test_save_note_keeps_a_bounded_note(toolbox: Toolbox, state: AgentState) -> None:
    assert json.loads(toolbox.run("save_note", json.dumps({"text": "  " + "x" * 5000}), state)) == {"saved": True}

    assert state.notes == ["x" * MAX_NOTE_CHARS]


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("search_knowledge", '{"query": "   "}', "query must not be empty"),
        ("search_knowledge", '{"query": ', "arguments are not valid JSON"),
        ("search_knowledge", '["query"]', "arguments must be a JSON object"),
        ("read_document", '{"doc_id": "nowhere"}', "no document 'nowhere'"),
        ("read_document", '{"doc_id": "engine", "chunk_id": 9}', "no document 'engine' chunk 9"),
        ("save_note", '{"text": ""}', "text must not be empty"),
        ("write_report", '{"markdown": "", "citations": []}', "write_report is handled by the agent loop"),
        ("delete_index", "{}", "unknown tool 'delete_index'; available tools: search_knowledge"),
    ],
)
def test_bad_calls_are_refused_with_a_reason(
    toolbox: Toolbox, state: AgentState, name: str, arguments: str, message: str
) -> None:
    with pytest.raises(ToolRefused, match="^" + message.replace("(", r"\(")):
        toolbox.run(name, arguments, state)

    assert state.sources == {} and state.notes == []


def test_a_tool_outside_the_policy_is_refused_before_it_runs(index: LocalKnowledgeIndex, state: AgentState) -> None:
    narrow = Toolbox(index=index, allowed=["search_knowledge", FINAL_TOOL])

    with pytest.raises(ToolRefused, match="^tool 'read_document' is not allowed by this job's policy$"):
        narrow.run("read_document", '{"doc_id": "engine", "chunk_id": 0}', state)

    assert state.sources == {}
