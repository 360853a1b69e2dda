"""One ChatModel contract, run against the offline extractive model and the OpenAI adapter.

The adapter runs through the real openai SDK against the scripted OpenAI-compatible server on
loopback, in both URL shapes it speaks: OpenAI's (`/v1/chat/completions`, also Ollama and vLLM)
and Azure OpenAI's (`/openai/deployments/{deployment}/...`). There the server plays a minimal
model: it calls the first offered tool until a tool has answered, then answers in text. And it runs
against a real llama.cpp server (tests/fixtures/llama_server.py: SmolLM2-135M-Instruct), whose
model chooses for itself: with it, the specs hold what must hold for any model (the request with
tools is accepted, a tool call it makes is well formed, usage is the server's), and its wire
quirks and failure modes are real ones.

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
from pathlib import Path
from typing import Any

import pytest

from agents.tools import tool_specs
from shared.adapters.azure.openai_model import OpenAIChatModel
from shared.adapters.local.offline_model import OfflineModel
from shared.errors import DependencyUnavailable
from shared.ports import ChatModel, ModelTurn, PermanentModelError, TransientModelError
from tests.fixtures.llama_server import MODEL_ALIAS, LlamaServer, UsageTap, start_llama_server
from tests.fixtures.scripted_openai import (
    ScriptedOpenAI,
    ScriptedResponse,
    completion,
    content_filter_error,
    error,
    models_list,
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
    # The offline model and the scripted stand-in follow a known script (search first); a real model chooses.
    scripted: bool = True


def llama_model(server: LlamaServer, *, model: str = MODEL_ALIAS, timeout: float = 60.0) -> OpenAIChatModel:
    return OpenAIChatModel.for_openai(model, base_url=server.base_url, timeout=timeout)


@pytest.fixture(params=["offline", *NETWORK, "llamacpp"])
def subject(request: pytest.FixtureRequest) -> Subject:
    if request.param == "offline":
        return Subject(OfflineModel(), "offline-extractive", offline=True)
    if request.param == "llamacpp":
        llama: LlamaServer = request.getfixturevalue("llama_server")
        return Subject(llama_model(llama), f"openai-compatible:{MODEL_ALIAS}", offline=False, scripted=False)
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
    if subject.scripted:
        assert turn.tool_calls, "a first turn with tools and nothing read yet should call a tool"
    else:  # a real model may answer in text instead; the request with tools was accepted either way
        assert turn.tool_calls or (turn.content or "").strip()
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

    if not subject.scripted:  # a real model's calls carry its own words: they must still be JSON text
        assert all(isinstance(json.loads(c.arguments), dict) for c in turn.tool_calls)
        return
    [search] = turn.tool_calls
    assert json.loads(search.arguments)["query"] == question


def test_tool_answers_are_taken_by_call_id_and_the_next_turn_uses_new_ids(subject: Subject) -> None:
    if not subject.scripted:
        pytest.skip("a real model picks its own first turn; the next spec sends it a fixed one")
    first = subject.model.complete(conversation(), TOOLS)
    history = answered(conversation(), first, {"results": []})

    second = subject.model.complete(history, TOOLS)

    assert isinstance(second, ModelTurn)
    assert second.usage.total_tokens > 0
    assert not {c.id for c in second.tool_calls} & {c.id for c in first.tool_calls}
    if subject.server is not None:  # what went over the wire is the history, ids included
        sent = subject.server.chat_requests[-1].body["messages"]
        assert [m["tool_call_id"] for m in sent if m["role"] == "tool"] == [c.id for c in first.tool_calls]


def test_a_history_with_a_tool_only_turn_is_accepted_and_sent_with_empty_content(subject: Subject) -> None:
    # The agent records a turn that only called tools with content None; llama-cpp-python's server
    # answers a null content with a 500, so the wire must carry "".
    call = {"id": "call_fixed", "type": "function", "function": {"name": "search_knowledge", "arguments": "{}"}}
    history = [
        *conversation(),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_fixed", "content": json.dumps({"results": []})},
    ]

    turn = subject.model.complete(history, TOOLS)

    assert isinstance(turn, ModelTurn) and turn.usage.total_tokens > 0
    assert history[2]["content"] is None  # the caller's conversation is left as it was
    if subject.server is not None:
        sent = subject.server.chat_requests[-1].body["messages"]
        assert [m["content"] for m in sent if m["role"] == "assistant"] == [""]


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


# --- failures of a real server ------------------------------------------------------------------------


def test_a_timeout_is_transient(remote: tuple[OpenAIChatModel, ScriptedOpenAI]) -> None:
    _, server = remote
    model = OpenAIChatModel.for_openai("gpt-test", base_url=server.base_url, api_key="k", timeout=0.2)
    server.script([completion("late", delay=1.0)])

    with pytest.raises(TransientModelError):
        model.complete(conversation(), TOOLS)


def test_a_real_server_that_outlasts_the_timeout_is_transient(llama_server: LlamaServer) -> None:
    # Generating even a few tokens takes far longer than 50 ms on CPU.
    model = llama_model(llama_server, timeout=0.05)

    with pytest.raises(TransientModelError):
        model.complete(conversation(), TOOLS)


def test_a_killed_server_is_transient(tmp_path: Path) -> None:
    server = start_llama_server(tmp_path / "killed.log")
    try:
        model = llama_model(server)
        model.ping()  # a pooled connection to the live server, then it dies
        server.kill()

        with pytest.raises(TransientModelError):
            model.complete(conversation(), TOOLS)
    finally:
        server.stop()


def test_a_wrong_model_name_is_permanent_on_a_real_server(llama_server: LlamaServer) -> None:
    # llama.cpp serves one model and answers any name with it; the adapter checks the name it was given.
    model = llama_model(llama_server, model="gpt-4o-typo")

    with pytest.raises(PermanentModelError) as caught:
        model.complete(conversation(), TOOLS)

    assert caught.value.reason == "model_rejected"
    assert MODEL_ALIAS in str(caught.value)  # the message names what the server does serve


@pytest.mark.parametrize(
    "reply",
    [
        # vLLM and Ollama: a 404 naming the model
        pytest.param(lambda: error(404, "The model `gpt-4o-typo` does not exist.", code="model_not_found"), id="404"),
        # a single-model server: answers with its own model, and its listing does not name ours
        pytest.param(lambda: completion("hello", model="other-model"), id="answered-by-another"),
    ],
)
def test_a_wrong_model_name_is_permanent(
    scripted_openai: ScriptedOpenAI, reply: Callable[[], ScriptedResponse]
) -> None:
    scripted_openai.models_reply = models_list("other-model")
    scripted_openai.script([reply()])
    model = OpenAIChatModel.for_openai("gpt-4o-typo", base_url=scripted_openai.base_url, timeout=5.0)

    with pytest.raises(PermanentModelError) as caught:
        model.complete(conversation(), TOOLS)

    assert caught.value.reason == "model_rejected"


def test_a_dated_or_tagged_variant_of_the_name_is_the_same_model(scripted_openai: ScriptedOpenAI) -> None:
    scripted_openai.script([completion("hi", model="gpt-4o-mini-2024-07-18"), completion("hi", model="x")])
    scripted_openai.models_reply = models_list("gpt-4o-mini")
    model = OpenAIChatModel.for_openai("gpt-4o-mini", base_url=scripted_openai.base_url, timeout=5.0)

    assert model.complete(conversation(), []).model == "gpt-4o-mini-2024-07-18"
    assert model.complete(conversation(), []).content == "hi"  # checked once: no listing asked for
    assert [r.path.rsplit("/", 1)[-1] for r in scripted_openai.requests] == ["completions", "completions"]


def test_usage_is_the_real_servers_own_count(llama_server: LlamaServer) -> None:
    with UsageTap(llama_server.base_url.removesuffix("/v1")) as tap:
        model = OpenAIChatModel.for_openai(MODEL_ALIAS, base_url=tap.base_url, timeout=60.0)

        turn = model.complete(conversation(), TOOLS)

    [reported] = tap.usages
    assert turn.usage.prompt_tokens == reported["prompt_tokens"] > 0
    assert turn.usage.completion_tokens == reported["completion_tokens"] > 0
    assert turn.usage.cached_tokens == reported.get("prompt_tokens_details", {}).get("cached_tokens", 0)
