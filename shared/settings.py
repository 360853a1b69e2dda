"""Typed app settings, read once from the environment (app settings in Azure, local.settings.json
under Core Tools, the process environment under the embedded runtime).

Identity-based forms (`ServiceBusConnection__fullyQualifiedNamespace`,
`AzureWebJobsStorage__blobServiceUri`) are accepted beside connection strings.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.contracts import Policy

DEV_API_KEY = "dev-local-key"
"""The one documented development key of the embedded defaults (tenant "dev", admin role)."""

Role = Literal["submitter", "operator", "admin"]
"""submitter < operator < admin: the first two act in their own tenant only, admin across tenants."""


class ApiKey(BaseModel):
    """A key configured in API_KEYS (beside the hashed keys `agentctl keys create` issues)."""

    tenant: str
    role: Role = "submitter"


class WebhookTenant(BaseModel):
    """A tenant's webhook settings (WEBHOOK_TENANTS)."""

    default_url: str | None = Field(None, description="Where jobs without a callback_url deliver.")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Host names (or *.suffix) callbacks may name; empty: no webhooks."
    )
    secrets: list[str] = Field(
        default_factory=list,
        description="Signing keys (whsec_<base64>), newest first; every one signs, so receivers can rotate.",
    )


class ModelPrice(BaseModel):
    """What a model or deployment costs per 1M tokens, in PRICE_CURRENCY."""

    prompt: float = Field(0.0, ge=0, description="Per 1M prompt tokens not served from the cache.")
    cached_prompt: float | None = Field(
        None, ge=0, description="Per 1M cached prompt tokens; the prompt price when unset."
    )
    completion: float = Field(0.0, ge=0, description="Per 1M completion tokens.")


def _alias(*names: str) -> Any:
    return Field(None, validation_alias=AliasChoices(*names))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, populate_by_name=True)

    app_env: Literal["development", "production"] = Field("development", validation_alias="APP_ENV")
    data_dir: Path = Field(Path(".data"), validation_alias="DATA_DIR")

    # --- queue ---------------------------------------------------------------------------------
    agent_jobs_queue: str = Field("agent-jobs", validation_alias="AGENT_JOBS_QUEUE")
    # Later steps of started jobs; on the embedded runtime the same file serves them first by priority.
    agent_continuations_queue: str = Field("agent-continuations", validation_alias="AGENT_CONTINUATIONS_QUEUE")
    servicebus_connection: str | None = _alias("ServiceBusConnection")
    servicebus_namespace: str | None = _alias("ServiceBusConnection__fullyQualifiedNamespace")
    queue_max_delivery_count: int = Field(10, validation_alias="QUEUE_MAX_DELIVERY_COUNT")
    queue_lock_seconds: float = Field(60.0, validation_alias="QUEUE_LOCK_SECONDS")
    queue_duplicate_window_seconds: float = Field(600.0, validation_alias="QUEUE_DUPLICATE_WINDOW_SECONDS")

    # --- storage -------------------------------------------------------------------------------
    embedded_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL",
        validation_alias="EMBEDDED_SYNCHRONOUS",
        description="SQLite synchronous mode of the embedded object store and queue: FULL fsyncs every commit "
        "(a committed step survives an OS crash); NORMAL survives only a process crash.",
    )
    storage_connection: str | None = _alias("AzureWebJobsStorage", "STORAGE_CONNECTION")
    storage_blob_uri: str | None = _alias("AzureWebJobsStorage__blobServiceUri")

    # --- search --------------------------------------------------------------------------------
    search_endpoint: str | None = _alias("SEARCH_ENDPOINT", "AZURE_SEARCH_ENDPOINT")
    search_api_key: str | None = _alias("SEARCH_API_KEY", "AZURE_SEARCH_API_KEY")
    search_index_name: str = Field("knowledge", validation_alias="SEARCH_INDEX_NAME")
    search_mode: Literal["bm25", "hybrid"] = Field(
        "bm25",
        validation_alias="SEARCH_MODE",
        description="Embedded index only: bm25, or hybrid (BM25 + all-MiniLM-L6-v2 vectors fused by reciprocal "
        "rank fusion; needs requirements-hybrid.txt). Azure AI Search keeps its own hybrid mode.",
    )
    chunk_chars: int = Field(800, validation_alias="CHUNK_CHARS")
    chunk_overlap_chars: int = Field(
        100,
        validation_alias="CHUNK_OVERLAP_CHARS",
        description="Whole sentences of the previous chunk (up to this many characters) repeated at a chunk's start.",
    )
    ingest_sync_max_files: int = Field(
        20,
        validation_alias="INGEST_SYNC_MAX_FILES",
        description="Uploads with more files than this become an ingestion job (202 and a status URL).",
    )
    ingest_sync_max_bytes: int = Field(
        2_000_000, validation_alias="INGEST_SYNC_MAX_BYTES", description="Uploads larger than this become a job."
    )
    ingest_max_files: int = Field(
        10_000,
        validation_alias="INGEST_MAX_FILES",
        description="Files one upload may carry (MAX_BODY_BYTES still applies).",
    )
    ingest_batch_files: int = Field(
        50, validation_alias="INGEST_BATCH_FILES", description="Files per queue message of an ingestion job."
    )
    embedding_dimensions: int = Field(
        1536, validation_alias="EMBEDDING_DIMENSIONS", description="Size of the search index's vector field."
    )

    # --- model ---------------------------------------------------------------------------------
    azure_openai_endpoint: str | None = _alias("AZURE_OPENAI_ENDPOINT")
    azure_openai_api_key: str | None = _alias("AZURE_OPENAI_API_KEY")
    azure_openai_deployment: str | None = _alias("AZURE_OPENAI_DEPLOYMENT", "AZURE_OPENAI_CHAT_DEPLOYMENT")
    azure_openai_api_version: str = Field("2024-10-21", validation_alias="AZURE_OPENAI_API_VERSION")
    azure_openai_embedding_deployment: str | None = _alias("AZURE_OPENAI_EMBEDDING_DEPLOYMENT")
    openai_base_url: str | None = _alias("OPENAI_BASE_URL")
    openai_api_key: str | None = _alias("OPENAI_API_KEY")
    openai_model: str | None = _alias("OPENAI_MODEL")
    model_timeout_seconds: float = Field(60.0, validation_alias="MODEL_TIMEOUT_SECONDS")
    context_budget_tokens: int = Field(12_000, validation_alias="CONTEXT_BUDGET_TOKENS")
    offline_model_latency_ms: float = Field(
        0.0, validation_alias="OFFLINE_MODEL_LATENCY_MS", description="Simulated think time of the offline model."
    )

    # --- API -----------------------------------------------------------------------------------
    api_keys: dict[str, ApiKey] = Field(
        default_factory=lambda: {DEV_API_KEY: ApiKey(tenant="dev", role="admin")},
        validation_alias="API_KEYS",
        description='JSON: {"<key>": {"tenant": "...", "role": "submitter|operator|admin"}}',
    )
    max_body_bytes: int = Field(1_000_000, validation_alias="MAX_BODY_BYTES")
    rate_limit_per_minute: int = Field(
        600, ge=1, validation_alias="RATE_LIMIT_PER_MINUTE", description="Requests per minute of one key."
    )
    tenant_rate_limit_per_minute: int = Field(
        1200, ge=1, validation_alias="TENANT_RATE_LIMIT_PER_MINUTE", description="Of all a tenant's keys together."
    )
    auth_failures_per_minute: int = Field(
        20,
        ge=1,
        validation_alias="AUTH_FAILURES_PER_MINUTE",
        description="Failed authentications from one client address; past it every attempt from there gets 429.",
    )
    key_cache_seconds: float = Field(
        5.0,
        ge=0,
        validation_alias="KEY_CACHE_SECONDS",
        description="How long a process reuses a stored key's record (0: read it on every request). A key revoked "
        "by another process (`agentctl keys revoke`) is refused here at most this long after; by this one, at once.",
    )
    rate_limit_storage: str = Field(
        "sqlite",
        validation_alias="RATE_LIMIT_STORAGE",
        description="Where limit counters live: sqlite (DATA_DIR/limits.db, shared by the processes of one "
        "machine) or a `limits` storage URI (redis://..., memory://) shared by every instance.",
    )
    # Entra ID bearer tokens (optional): set all three to accept `Authorization: Bearer <JWT>`.
    entra_issuer: str | None = Field(None, validation_alias="ENTRA_ISSUER")
    entra_audience: str | None = Field(None, validation_alias="ENTRA_AUDIENCE")
    entra_jwks_url: str | None = Field(None, validation_alias="ENTRA_JWKS_URL")
    entra_tenants: dict[str, str] = Field(
        default_factory=dict,
        validation_alias="ENTRA_TENANTS",
        description='JSON: {"<Entra tid>": "<our tenant>"}; a token whose tid is not listed is refused.',
    )
    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "[::1]", "*.azurewebsites.net"],
        validation_alias="ALLOWED_HOSTS",
        description='JSON list of the Host names the API answers to ("*.suffix" for subdomains; "*" for any); '
        "others get 400. Add custom domains and the API Management or Front Door host here.",
    )
    health_cache_seconds: float = Field(
        5.0,
        ge=0,
        validation_alias="HEALTH_CACHE_SECONDS",
        description="Anonymous GET /api/health answers from a check at most this old (0: from a check that "
        "was running when asked, or a new one).",
    )

    # --- policy, budget, memory ----------------------------------------------------------------
    policy_defaults: Policy = Field(default_factory=Policy, validation_alias="POLICY_DEFAULTS")
    tenant_policies: dict[str, Policy] = Field(default_factory=dict, validation_alias="TENANT_POLICIES")
    monthly_token_budget: int = Field(5_000_000, validation_alias="MONTHLY_TOKEN_BUDGET")
    tenant_token_budgets: dict[str, int] = Field(default_factory=dict, validation_alias="TENANT_TOKEN_BUDGETS")

    # --- prices and money budgets (docs/models.md "Cost") ----------------------------------------
    model_prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        validation_alias="MODEL_PRICES",
        description='JSON, per model or deployment: {"gpt-4o-mini": {"prompt": 0.15, "cached_prompt": 0.075, '
        '"completion": 0.6}}; keys are the model\'s full name ("azure-openai:gpt-4o-mini") or the part after ":".',
    )
    price_currency: str = Field("USD", validation_alias="PRICE_CURRENCY")
    monthly_cost_budget: float | None = Field(
        None, ge=0, validation_alias="MONTHLY_COST_BUDGET", description="Money per tenant per month, if any."
    )
    tenant_cost_budgets: dict[str, float] = Field(default_factory=dict, validation_alias="TENANT_COST_BUDGETS")
    memory_ttl_seconds: float = Field(3600.0, validation_alias="MEMORY_TTL_SECONDS")
    memory_max_items: int = Field(20, validation_alias="MEMORY_MAX_ITEMS")
    memory_item_prompt_chars: int = Field(
        500,
        ge=20,
        validation_alias="MEMORY_ITEM_PROMPT_CHARS",
        description="A remembered finding or note enters a later job's prompt cut to this many characters.",
    )
    memory_prompt_chars: int = Field(
        4000,
        ge=100,
        validation_alias="MEMORY_PROMPT_CHARS",
        description="All of a session's memory in one prompt, at most (the newest entries first).",
    )
    report_link_hosts: list[str] = Field(
        default_factory=list,
        validation_alias="REPORT_LINK_HOSTS",
        description='JSON list of hosts (["docs.example.com"]) a delivered report may link to besides its cited '
        "sources' URLs; http(s) only.",
    )
    max_concurrent_jobs: int = Field(16, validation_alias="MAX_CONCURRENT_JOBS")
    step_retry_base_seconds: float = Field(2.0, validation_alias="STEP_RETRY_BASE_SECONDS")
    step_max_retries: int = Field(6, validation_alias="STEP_MAX_RETRIES")

    # --- maintenance ---------------------------------------------------------------------------
    backup_schedule: str = Field("0 0 18 * * *", validation_alias="BACKUP_SCHEDULE")
    dlq_sweep_schedule: str = Field("0 */15 * * * *", validation_alias="DLQ_SWEEP_SCHEDULE")
    weekly_checks_schedule: str = Field("0 0 0 * * 1", validation_alias="WEEKLY_CHECKS_SCHEDULE")
    retention_schedule: str = Field("0 30 18 * * *", validation_alias="RETENTION_SCHEDULE")
    stuck_jobs_schedule: str = Field("0 */5 * * * *", validation_alias="STUCK_JOBS_SCHEDULE")
    # A job is stuck when nothing moved for a step's expected time plus the queue's lock duration
    # and no message for its next step is waiting, scheduled or running.
    stuck_step_seconds: float = Field(300.0, gt=0, validation_alias="STUCK_STEP_SECONDS")
    stuck_max_repairs: int = Field(3, ge=0, validation_alias="STUCK_MAX_REPAIRS")
    backups_to_keep: int = Field(7, validation_alias="BACKUPS_TO_KEEP")
    dlq_max_resubmissions: int = Field(3, validation_alias="DLQ_MAX_RESUBMISSIONS")
    stale_job_minutes: float = Field(30.0, validation_alias="STALE_JOB_MINUTES")
    checkpoint_retention_days: float = Field(30.0, validation_alias="CHECKPOINT_RETENTION_DAYS")
    # Bounded storage: the retention timer applies these (see shared/engine/layout.py, one rule per container).
    job_retention_days: float = Field(
        90.0,
        gt=0,
        validation_alias="JOB_RETENTION_DAYS",
        description="Finished jobs older than this lose their record, report, listing marker, re-submission log, "
        "webhook deliveries and last checkpoint; their month's per-job ledger records go once that month is "
        "closed and has a total (the total is kept).",
    )
    idempotency_retention_hours: float = Field(
        24.0,
        gt=0,
        validation_alias="IDEMPOTENCY_RETENTION_HOURS",
        description="How long an Idempotency-Key replays its first job; older records are deleted.",
    )
    ops_retention_days: float = Field(
        30.0, gt=0, validation_alias="OPS_RETENTION_DAYS", description="Timer run records, weekly reports, probes."
    )
    runtime_log_max_bytes: int = Field(
        10_000_000,
        ge=0,
        validation_alias="RUNTIME_LOG_MAX_BYTES",
        description="The embedded runtime's JSON-lines log rotates at this size (0: never).",
    )
    runtime_log_backups: int = Field(
        3, ge=1, validation_alias="RUNTIME_LOG_BACKUPS", description="Rotated log files kept (runtime.jsonl.1, ...)."
    )

    # --- progress events, webhooks, schedules ---------------------------------------------------
    events_heartbeat_seconds: float = Field(15.0, validation_alias="EVENTS_HEARTBEAT_SECONDS")
    events_poll_seconds: float = Field(
        1.0, validation_alias="EVENTS_POLL_SECONDS", description="Re-read interval for changes made by other processes."
    )
    events_max_stream_seconds: float = Field(
        600.0, validation_alias="EVENTS_MAX_STREAM_SECONDS", description="SSE streams end after this; clients resume."
    )
    webhook_tenants: dict[str, WebhookTenant] = Field(default_factory=dict, validation_alias="WEBHOOK_TENANTS")
    webhook_allowed_networks: list[str] = Field(
        default_factory=list,
        validation_alias="WEBHOOK_ALLOWED_NETWORKS",
        description='JSON list of CIDRs (["127.0.0.0/8"]) of private/loopback/link-local addresses webhooks may reach.',
    )
    webhook_max_attempts: int = Field(8, ge=1, validation_alias="WEBHOOK_MAX_ATTEMPTS")
    webhook_retry_base_seconds: float = Field(5.0, validation_alias="WEBHOOK_RETRY_BASE_SECONDS")
    webhook_max_backoff_seconds: float = Field(3600.0, validation_alias="WEBHOOK_MAX_BACKOFF_SECONDS")
    webhook_timeout_seconds: float = Field(10.0, validation_alias="WEBHOOK_TIMEOUT_SECONDS")
    schedules_schedule: str = Field("0 * * * * *", validation_alias="SCHEDULES_SCHEDULE")
    schedule_min_interval_seconds: float = Field(
        300.0, validation_alias="SCHEDULE_MIN_INTERVAL_SECONDS", description="Closest two occurrences of a schedule."
    )

    # --- operator console (/console) -----------------------------------------------------------
    console_session_secret: str | None = Field(
        None,
        validation_alias="CONSOLE_SESSION_SECRET",
        description="Signs console session cookies (the same on every instance); unset, a key derived from API_KEYS.",
    )
    console_session_minutes: int = Field(480, validation_alias="CONSOLE_SESSION_MINUTES")

    # --- telemetry -----------------------------------------------------------------------------
    appinsights_connection_string: str | None = _alias("APPLICATIONINSIGHTS_CONNECTION_STRING")
    log_level: str = Field("INFO", validation_alias="LOG_LEVEL")

    @field_validator(
        "api_keys",
        "tenant_policies",
        "tenant_token_budgets",
        "policy_defaults",
        "webhook_tenants",
        "model_prices",
        "tenant_cost_budgets",
        "entra_tenants",
        mode="before",
    )
    @classmethod
    def _json_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @field_validator("webhook_allowed_networks", "report_link_hosts", "allowed_hosts", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        # The environment source decodes JSON itself; settings given by name (local.settings.json, tests) may not.
        if isinstance(value, str):
            return json.loads(value) if value.strip() else []
        return value

    @property
    def runtime_log_path(self) -> Path:
        """The embedded runtime's JSON-lines log, which `agentctl logs` reads."""
        return self.data_dir / "logs" / "runtime.jsonl"

    def budget_for(self, tenant: str) -> int:
        return self.tenant_token_budgets.get(tenant, self.monthly_token_budget)

    def cost_budget_for(self, tenant: str) -> float | None:
        """The tenant's monthly budget in PRICE_CURRENCY, or None when only tokens are budgeted."""
        return self.tenant_cost_budgets.get(tenant, self.monthly_cost_budget)

    def price_for(self, model: str) -> ModelPrice | None:
        """The price of a model by its full name ("azure-openai:gpt-4o-mini"), else by the part after ":"."""
        return self.model_prices.get(model) or self.model_prices.get(model.split(":", 1)[-1])


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests change the environment between cases)."""
    get_settings.cache_clear()


def resolve_binding_expression(value: str, settings: Settings | None = None) -> str:
    """Resolve a "%NAME%" binding expression the way the Functions host does, with our defaults.

    The process environment wins; otherwise the typed setting whose alias is NAME supplies
    its default, so "%AGENT_JOBS_QUEUE%" means the same thing under every host.
    """
    import os

    if not (value.startswith("%") and value.endswith("%") and len(value) > 2):
        return value
    name = value[1:-1]
    if name in os.environ:
        return os.environ[name]
    settings = settings or get_settings()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names = alias.choices if isinstance(alias, AliasChoices) else [alias]
        if name in [str(n) for n in names]:
            resolved = getattr(settings, field_name)
            if resolved is not None:
                return str(resolved)
    raise KeyError(f"app setting {name} is not set; set it in local.settings.json or app settings")


def load_local_settings(path: Path) -> None:
    """Apply local.settings.json Values without overriding the real environment."""
    if not path.exists():
        return
    values = json.loads(path.read_text(encoding="utf-8")).get("Values", {})
    for name, value in values.items():
        os.environ.setdefault(name, str(value))
