"""The ChatModel port over the official openai SDK: Azure OpenAI, OpenAI, or any compatible server.

One call is one model turn. The SDK's own retries are off (max_retries=0): a rate-limited or
failing call raises TransientModelError at once, carrying the server's Retry-After, and the
step engine reschedules the step instead of holding a worker while the SDK sleeps. Errors a
retry cannot fix (content filter, auth, unknown model) raise PermanentModelError, so a job
fails without spending more tokens.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import openai
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import DefaultAzureCredential, get_bearer_token_provider
from openai.types.chat import ChatCompletion

from shared.contracts import Usage
from shared.errors import DependencyUnavailable
from shared.ports import ModelTurn, PermanentModelError, ToolCall, TransientModelError
from shared.settings import Settings

AZURE_OPENAI_SCOPE = "https://cognitiveservices.azure.com/.default"
OPENAI_BASE_URL = "https://api.openai.com/v1"
# Ollama, vLLM and llama.cpp ignore the key, but the SDK insists on having one.
PLACEHOLDER_API_KEY = "not-needed"
PING_TIMEOUT_SECONDS = 10.0
MAX_SERVER_MESSAGE_CHARS = 300

TRANSIENT_STATUSES = frozenset({408, 409, 429})
CONTENT_FILTER_CODES = frozenset({"content_filter", "content_policy_violation", "ResponsibleAIPolicyViolation"})
# OpenAI answers 429 when the account's quota is spent; waiting does not refill it.
QUOTA_CODES = frozenset({"insufficient_quota"})


class OpenAIChatModel:
    """A ChatModel backed by a chat completions endpoint, with native tool calling."""

    offline = False

    def __init__(
        self,
        client: openai.OpenAI,
        model: str,
        *,
        name: str | None = None,
        auth_hint: str = "check the API key",
        model_hint: str = "check the model name",
        verify_model: bool = False,
    ) -> None:
        self._client = client
        self.model = model  # for Azure, the deployment name
        self.name = name or f"openai:{model}"
        self._auth_hint = auth_hint
        self._model_hint = model_hint
        # A single-model server (llama.cpp) answers any model name with its own model instead of a 404;
        # True until the first answer shows the configured name is really served.
        self._verify_model = verify_model

    # --- builders ------------------------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIChatModel | None:
        """Azure OpenAI if its endpoint and chat deployment are set, else an OpenAI(-compatible)
        endpoint if OPENAI_* is set, else None (the caller uses the offline model)."""
        timeout = settings.model_timeout_seconds
        if settings.azure_openai_endpoint and settings.azure_openai_deployment:
            token_provider = None
            if not settings.azure_openai_api_key:
                # Entra ID (managed identity in Azure, az login locally): no key in app settings.
                token_provider = get_bearer_token_provider(DefaultAzureCredential(), AZURE_OPENAI_SCOPE)
            return cls.for_azure(
                settings.azure_openai_endpoint,
                settings.azure_openai_deployment,
                api_version=settings.azure_openai_api_version,
                api_key=settings.azure_openai_api_key,
                token_provider=token_provider,
                timeout=timeout,
            )
        if settings.openai_base_url or settings.openai_api_key or settings.openai_model:
            if not settings.openai_model:
                raise ValueError(
                    "OPENAI_MODEL is not set; set it to the model to use (e.g. gpt-4o-mini, or the name "
                    "the server at OPENAI_BASE_URL serves), or unset OPENAI_* to use the offline model"
                )
            if not settings.openai_base_url and not settings.openai_api_key:
                raise ValueError(
                    "OPENAI_MODEL is set but neither OPENAI_API_KEY nor OPENAI_BASE_URL is; set OPENAI_API_KEY "
                    "for OpenAI, or OPENAI_BASE_URL for a compatible server (Ollama, vLLM, llama.cpp)"
                )
            return cls.for_openai(
                settings.openai_model,
                base_url=settings.openai_base_url,
                api_key=settings.openai_api_key,
                timeout=timeout,
            )
        return None

    @classmethod
    def for_azure(
        cls,
        endpoint: str,
        deployment: str,
        *,
        api_version: str,
        api_key: str | None = None,
        token_provider: Callable[[], str] | None = None,
        timeout: float = 60.0,
    ) -> OpenAIChatModel:
        """Azure OpenAI with an api-key, or an Entra ID bearer token from token_provider."""
        if bool(api_key) == bool(token_provider):
            raise ValueError("Azure OpenAI needs exactly one of an API key or an Entra ID token provider")
        client = openai.AzureOpenAI(
            azure_endpoint=endpoint,
            azure_deployment=deployment,
            api_version=api_version,
            api_key=api_key or None,
            azure_ad_token_provider=token_provider,
            timeout=timeout,
            max_retries=0,
        )
        auth_hint = (
            "check AZURE_OPENAI_API_KEY"
            if api_key
            else "grant the app's identity the 'Cognitive Services OpenAI User' role on the resource, "
            "or set AZURE_OPENAI_API_KEY"
        )
        return cls(
            client,
            deployment,
            name=f"azure-openai:{deployment}",
            auth_hint=auth_hint,
            model_hint=f"check AZURE_OPENAI_DEPLOYMENT ({deployment}) and AZURE_OPENAI_ENDPOINT",
        )

    @classmethod
    def for_openai(
        cls, model: str, *, base_url: str | None = None, api_key: str | None = None, timeout: float = 60.0
    ) -> OpenAIChatModel:
        """OpenAI itself, or any server speaking its chat completions API at base_url."""
        client = openai.OpenAI(
            api_key=api_key or PLACEHOLDER_API_KEY,
            # Passed explicitly so the SDK never falls back to reading the environment itself.
            base_url=base_url or OPENAI_BASE_URL,
            timeout=timeout,
            max_retries=0,
        )
        return cls(
            client,
            model,
            name=f"openai-compatible:{model}" if base_url else f"openai:{model}",
            auth_hint="check OPENAI_API_KEY",
            model_hint=f"check OPENAI_MODEL ({model})" + (" and OPENAI_BASE_URL" if base_url else ""),
            verify_model=bool(base_url),
        )

    # --- the port ------------------------------------------------------------------------------

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> ModelTurn:
        request: dict[str, Any] = {"model": self.model, "messages": wire_messages(messages)}
        if tools:
            # An empty tools list is a 400 on OpenAI, so it is only sent when there are tools.
            request["tools"] = tools
            request["tool_choice"] = "auto"
        try:
            response = self._client.chat.completions.create(**request)
        except openai.APITimeoutError as exc:
            raise TransientModelError(f"{self.name}: no answer within {self._client.timeout}s") from exc
        except openai.APIConnectionError as exc:
            raise TransientModelError(f"{self.name}: could not connect ({exc.__cause__ or exc})") from exc
        except openai.APIStatusError as exc:
            raise self._classify(exc) from exc
        except ClientAuthenticationError as exc:
            # The Entra ID token provider could not get a token: retrying will not grant one.
            raise PermanentModelError(
                f"{self.name}: could not get an Entra ID token; {self._auth_hint}", reason="model_auth"
            ) from exc
        if self._verify_model:
            self._check_model_served(response.model)
        return self._turn(response)

    def ping(self) -> None:
        """Raise DependencyUnavailable unless the endpoint answers an authenticated models list."""
        configured = self._client.timeout
        limit = min(PING_TIMEOUT_SECONDS, configured) if isinstance(configured, int | float) else PING_TIMEOUT_SECONDS
        client = self._client.with_options(timeout=limit)
        try:
            client.models.list()
        except openai.APIStatusError as exc:
            if exc.status_code in (404, 405):
                # The server answered and took the credentials; it just has no models listing
                # (some gateways and proxies do not). Reachable is what a ping asks.
                return
            if exc.status_code in (401, 403):
                raise DependencyUnavailable(f"{self.name}: authentication failed; {self._auth_hint}") from exc
            raise DependencyUnavailable(f"{self.name}: models endpoint answered {exc.status_code}") from exc
        except (openai.APIConnectionError, ClientAuthenticationError) as exc:
            raise DependencyUnavailable(f"{self.name}: unreachable ({type(exc).__name__})") from exc

    def _check_model_served(self, answered_by: str | None) -> None:
        """Raise PermanentModelError if the server answered with another model than the one configured
        and its models listing does not name ours: a typo in OPENAI_MODEL must fail the job, not
        quietly run every job on whatever model the server has loaded."""
        if not answered_by or _same_model(self.model, answered_by):
            self._verify_model = False
            return
        try:
            listing = self._client.models.list()
        except openai.APIConnectionError as exc:
            raise TransientModelError(f"{self.name}: could not connect ({exc.__cause__ or exc})") from exc
        except openai.APIStatusError:
            self._verify_model = False  # no listing to check against: the server's answer stands
            return
        served: set[str] = set()
        for entry in listing.data:
            served.add(entry.id)
            aliases = getattr(entry, "aliases", None)  # llama.cpp lists the names it answers to
            if isinstance(aliases, list):
                served.update(str(a) for a in aliases)
        if not served or any(_same_model(self.model, name) for name in served):
            self._verify_model = False
            return
        raise PermanentModelError(
            f"{self.name}: the server does not serve model {self.model!r} (it serves: "
            f"{', '.join(sorted(served)[:5])}); {self._model_hint}",
            reason="model_rejected",
        )

    # --- responses and errors ------------------------------------------------------------------

    def _turn(self, response: ChatCompletion) -> ModelTurn:
        if not response.choices:
            raise TransientModelError(f"{self.name}: the response had no choices")
        choice = response.choices[0]
        if choice.finish_reason == "content_filter":
            raise PermanentModelError(
                f"{self.name}: the completion was stopped by the content filter", reason="content_filter"
            )
        calls: list[ToolCall] = []
        for i, call in enumerate(choice.message.tool_calls or []):
            function = getattr(call, "function", None)
            if function is None:  # custom (non-function) tool calls: we never offer such tools
                continue
            # Some compatible servers omit ids; the agent pairs tool results with calls by id.
            call_id = call.id or f"call_{i}"
            calls.append(ToolCall(id=call_id, name=function.name, arguments=function.arguments or ""))
        return ModelTurn(
            content=choice.message.content,
            tool_calls=calls,
            usage=_usage(response),
            model=response.model or self.model,
        )

    def _classify(self, exc: openai.APIStatusError) -> Exception:
        status = exc.status_code
        codes = _error_codes(exc)
        where = f"{self.name}: HTTP {status}{_request_id(exc)}"
        if codes & QUOTA_CODES:
            return PermanentModelError(f"{where}: the account's quota is used up", reason="model_quota")
        if status in TRANSIENT_STATUSES or status >= 500:
            retry_after = retry_after_seconds(exc.response.headers)
            wait = f"; retry after {retry_after:g}s" if retry_after is not None else ""
            return TransientModelError(f"{where}: {_server_message(exc)}{wait}", retry_after=retry_after)
        if codes & CONTENT_FILTER_CODES:
            return PermanentModelError(
                f"{where}: the prompt was blocked by the content filter", reason="content_filter"
            )
        if status in (401, 403):
            # The server's text is left out: OpenAI echoes (part of) the key it was given.
            return PermanentModelError(f"{where}: authentication failed; {self._auth_hint}", reason="model_auth")
        if status == 404:
            return PermanentModelError(
                f"{where}: model or deployment not found; {self._model_hint}", reason="model_rejected"
            )
        return PermanentModelError(f"{where}: {_server_message(exc)}", reason="model_rejected")


def wire_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation as servers accept it: an assistant turn that only called tools carries
    content "" rather than null (OpenAI takes either; llama-cpp-python's server answers null with a 500)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.get("role") == "assistant" and m.get("tool_calls") and m.get("content") is None:
            m = {**m, "content": ""}
        out.append(m)
    return out


def _same_model(configured: str, named: str) -> bool:
    """Whether a server naming `named` serves `configured`: the same name, or a dated or tagged variant
    of it (OpenAI answers gpt-4o-mini with gpt-4o-mini-2024-07-18, Ollama llama3.2 with llama3.2:latest)."""
    return named == configured or named.startswith((f"{configured}-", f"{configured}:"))


def _usage(response: ChatCompletion) -> Usage:
    usage = response.usage
    if usage is None:  # some compatible servers do not report usage
        return Usage()
    details = usage.prompt_tokens_details
    return Usage(
        prompt_tokens=usage.prompt_tokens or 0,
        completion_tokens=usage.completion_tokens or 0,
        cached_tokens=(details.cached_tokens or 0) if details is not None else 0,
    )


def _error_codes(exc: openai.APIStatusError) -> set[str]:
    """The error's code and Azure's inner code (ResponsibleAIPolicyViolation sits there)."""
    codes = {exc.code} if exc.code else set()
    body = exc.body if isinstance(exc.body, dict) else {}
    inner = body.get("innererror")
    if isinstance(inner, dict) and inner.get("code"):
        codes.add(str(inner["code"]))
    return codes


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    message = str(body.get("message") or exc.message or "").strip()
    if len(message) > MAX_SERVER_MESSAGE_CHARS:
        message = message[:MAX_SERVER_MESSAGE_CHARS] + "..."
    return message or "no message"


def _request_id(exc: openai.APIStatusError) -> str:
    # Support asks for this id; Azure sends apim-request-id, OpenAI x-request-id.
    headers = exc.response.headers
    request_id = headers.get("x-request-id") or headers.get("apim-request-id")
    return f" (request {request_id})" if request_id else ""


def retry_after_seconds(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds the server asked us to wait: retry-after-ms, else retry-after (seconds or HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            value = float(millis) / 1000
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return max(0.0, value)
    text = headers.get("retry-after")
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        value = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, value) if math.isfinite(value) else None


from_settings = OpenAIChatModel.from_settings
