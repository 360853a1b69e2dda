"""One ChatModel contract, run against the offline extractive model and the OpenAI adapter.

The adapter runs through the real openai SDK against the scripted OpenAI-compatible server on
loopback, in both URL shapes it speaks: OpenAI's (`/v1/chat/completions`, also Ollama and vLLM)
and Azure OpenAI's (`/openai/deployments/{deployment}/...`). There the server plays a minimal
model: it calls the first offered tool until a tool has answered, then answers in text.

The agent leans on: a turn that calls tools names offered tools, gives each call an id it can
answer by, and passes arguments as JSON text; usage is counted per turn; failures come as
TransientModelError (try the step later, honouring retry_after) or PermanentModelError (fail
the job). The offline model cannot fail, so the error specs run against the network adapters.
tests/test_openai_model.py covers the adapter's own details (headers, auth, Retry-After forms).
"""

from __future__ import annotations

import itertools
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from agents.tools import tool_specs
from shared.adapters.azure.openai_model import OpenAIChatModel
from shared.adapters.local.offline_model import OfflineModel
from shared.errors import DependencyUnavailable
from shared.ports import ChatModel, ModelTurn, PermanentModelError, TransientModelError
from tests.fixtures.scripted_openai import (
    ScriptedOpenAI,
    ScriptedResponse,
    completion,
    content_filter_error,
    error,
)

QUESTION = "How does the step engine keep jobs durable?"
SYSTEM = {"role": "system", "content": "You are a research agent."}
TOOLS = tool_specs(["search_knowledge", "read_document", "write_report"])

NETWORK = ["openai", "azure-openai"]


def remote_builders() -> dict[str, Callable[[str], OpenAIChatModel]]:
    """Each network implementation, built against a server root (scripted, or a closed port)."""
    return {
        "openai": lambda root: OpenAIChatModel.for_openai(
            "gpt-test", base_url=f"{root}/v1", api_key="sk-test", timeout=5.0
        ),
        "azure-openai": lambda root: OpenAIChatModel.for_azure(
            root, "chat-dep", api_version="2024-10-21", api_key="azure-key", timeout=5.0
        ),
    }


def stand_in_model() -> Callable[[dict[str, Any]], ScriptedResponse]:
    """The scripted server's minimal model: call the first offered tool until one has answered, then answer."""
    ids = itertools.count()

    def reply(body: dict[str, Any]) -> ScriptedResponse:
        tools = body.get("tools") or []
        answered = any(m.get("role") == "tool" for m in body["messages"])
        if tools and not answered:
            question = next(m["content"] for m in body["messages"] if m["role"] == "user")
            return completion(
                tool_calls=[
                    {"id": f"call_{next(ids)}", "name": tools[0]["function"]["name"], "arguments": {"query": question}}
                ],
                prompt_tokens=42,
                completion_tokens=9,
            )
        return completion(
            "Jobs are durable because each step is committed once.", prompt_tokens=64, completion_tokens=12
        )

    return reply


@dataclass
class Subject:
    """A ChatModel under test and what its port attributes must say."""

    model: ChatModel
    name: str
    offline: bool
    server: ScriptedOpenAI | None = None


@pytest.fixture(params=["offline", *NETWORK])
def subject(request: pytest.FixtureRequest) -> Subject:
    if request.param == "offline":
        return Subject(OfflineModel(), "offline-extractive", offline=True)
    server: ScriptedOpenAI = request.getfixturevalue("scripted_openai")
    server.respond_with(stand_in_model())
    model = remote_builders()[request.param](server.endpoint)
    name = "openai-compatible:gpt-test" if request.param == "openai" else "azure-openai:chat-dep"
    return Subject(model, name, offline=False, server=server)


@pytest.fixture(params=NETWORK)
def remote(request: pytest.FixtureRequest, scripted_openai: ScriptedOpenAI) -> tuple[OpenAIChatModel, ScriptedOpenAI]:
    return remote_builders()[request.param](scripted_openai.endpoint), scripted_openai


@pytest.fixture(params=NETWORK)
def unreachable(request: pytest.FixtureRequest) -> OpenAIChatModel:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return remote_builders()[request.param](f"http://127.0.0.1:{port}")


def conversation(question: str = QUESTION) -> list[dict[str, Any]]:
    return [SYSTEM, {"role": "user", "content": question}]


def answered(messages: list[dict[str, Any]], turn: ModelTurn, result: dict[str, Any]) -> list[dict[str, Any]]:
    """messages, then the turn as the agent records it, then each call answered by its id."""
    assistant = {
        "role": "assistant",
        "content": turn.content,
        "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in turn.tool_calls
        ],
    }
    answers = [{"role": "tool", "tool_call_id": c.id, "content": json.dumps(result)} for c in turn.tool_calls]
    return [*messages, assistant, *answers]


# --- the port's attributes and ping ---------------------------------------------------------------


def test_conforms_to_the_port(subject: Subject) -> None:
    assert isinstance(subject.model, ChatModel)
    assert subject.model.name == subject.name
    assert subject.model.offline is subject.offline


def test_ping_succeeds_when_the_model_is_reachable(subject: Subject) -> None:
    subject.model.ping()  # returns without raising

    if subject.server is not None:
        assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in subject.server.requests] == [("GET", "models")]


def test_ping_of_an_unreachable_endpoint_raises_dependency_unavailable(unreachable: OpenAIChatModel) -> None:
    with pytest.raises(DependencyUnavailable):
        unreachable.ping()


# --- complete(): one turn --------------------------------------------------------------------------


def test_a_turn_with_tools_calls_offered_tools_by_id_with_json_arguments(subject: Subject) -> None:
    turn = subject.model.complete(conversation(), TOOLS)

    assert isinstance(turn, ModelTurn)
    assert turn.tool_calls, "a first turn with tools and nothing read yet should call a tool"
    offered = {t["function"]["name"] for t in TOOLS}
    assert {c.name for c in turn.tool_calls} <= offered
    ids = [c.id for c in turn.tool_calls]
    assert all(isinstance(i, str) and i for i in ids) and len(set(ids)) == len(ids)
    for c in turn.tool_calls:
        assert isinstance(c.arguments, str)  # JSON text exactly as produced, parsed by the tool
        assert isinstance(json.loads(c.arguments), dict)


def test_a_turn_counts_its_usage(subject: Subject) -> None:
    turn = subject.model.complete(conversation(), TOOLS)

    assert turn.usage.prompt_tokens > 0 and turn.usage.completion_tokens > 0
    assert turn.usage.total_tokens == turn.usage.prompt_tokens + turn.usage.completion_tokens
    assert turn.model  # what served the turn, for the report


def test_non_ascii_arguments_survive_as_json_text(subject: Subject) -> None:
    # Both the offline model and the server's stand-in search for the question as asked, so what
    # arrives is Japanese text decoded from the JSON the implementation produced or received.
    question = "ジョブが完了しないときはどうすればよいですか?"

    turn = subject.model.complete(conversation(question), TOOLS)

    [search] = turn.tool_calls
    assert json.loads(search.arguments)["query"] == question


def test_tool_answers_are_taken_by_call_id_and_the_next_turn_uses_new_ids(subject: Subject) -> None:
    first = subject.model.complete(conversation(), TOOLS)
    history = answered(conversation(), first, {"results": []})

    second = subject.model.complete(history, TOOLS)

    assert isinstance(second, ModelTurn)
    assert second.usage.total_tokens > 0
    assert not {c.id for c in second.tool_calls} & {c.id for c in first.tool_calls}
    if subject.server is not None:  # what went over the wire is the history, ids included
        sent = subject.server.chat_requests[-1].body["messages"]
        assert [m["tool_call_id"] for m in sent if m["role"] == "tool"] == [c.id for c in first.tool_calls]


def test_a_turn_without_tools_is_an_answer_in_text(subject: Subject) -> None:
    turn = subject.model.complete(conversation(), [])

    assert turn.tool_calls == []
    assert isinstance(turn.content, str) and turn.content.strip()


# --- failures: classified, never retried inside the call ---------------------------------------------


def test_rate_limiting_is_transient_and_carries_retry_after(remote: tuple[OpenAIChatModel, ScriptedOpenAI]) -> None:
    model, server = remote
    server.script([error(429, "Rate limit is exceeded.", code="429", headers={"retry-after": "7"})])

    with pytest.raises(TransientModelError) as caught:
        model.complete(conversation(), TOOLS)

    assert caught.value.retry_after == 7.0
    assert len(server.chat_requests) == 1  # the step engine reschedules; the call does not sleep and retry


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_transient(remote: tuple[OpenAIChatModel, ScriptedOpenAI], status: int) -> None:
    model, server = remote
    server.script([error(status, "The service is temporarily unable to process your request.")])

    with pytest.raises(TransientModelError) as caught:
        model.complete(conversation(), TOOLS)

    assert caught.value.retry_after is None
    assert len(server.chat_requests) == 1


def test_an_unreachable_endpoint_is_transient(unreachable: OpenAIChatModel) -> None:
    with pytest.raises(TransientModelError):
        unreachable.complete(conversation(), TOOLS)


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(content_filter_error, id="prompt-filtered"),
        pytest.param(lambda: completion("partial", finish_reason="content_filter"), id="completion-filtered"),
    ],
)
def test_content_filtering_is_permanent(
    remote: tuple[OpenAIChatModel, ScriptedOpenAI], reply: Callable[[], ScriptedResponse]
) -> None:
    model, server = remote
    server.script([reply()])

    with pytest.raises(PermanentModelError) as caught:
        model.complete(conversation(), TOOLS)

    assert caught.value.reason == "content_filter"
    assert len(server.chat_requests) == 1
