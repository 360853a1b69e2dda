"""The composition root: the one place that decides which adapter serves each port.

Imported only by the entry points (function_app.py, the CLI, the embedded runtime) and test
fixtures; everything below them receives a `Backends` bundle as a parameter.

A port is served by Azure when its settings are present, by the embedded adapter
otherwise. With APP_ENV=production a missing Azure setting is a startup error, never a
silent fallback to local disk.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from shared.engine.backends import Backends
from shared.errors import ConfigurationError
from shared.ports import ChatModel, KnowledgeIndex, ObjectStore, StepQueue
from shared.settings import Settings, get_settings


def _require(settings: Settings, what: str, names: str) -> None:
    if settings.app_env == "production":
        raise ConfigurationError(
            f"APP_ENV=production but {what} is not configured: set {names} in app settings "
            "(or local.settings.json). Production never falls back to embedded storage."
        )


def build_objects(settings: Settings) -> ObjectStore:
    if settings.storage_connection or settings.storage_blob_uri:
        from shared.adapters.azure.blob import AzureObjectStore

        return AzureObjectStore.from_settings(settings)
    _require(settings, "Blob Storage", "AzureWebJobsStorage__blobServiceUri or AzureWebJobsStorage")
    from shared.adapters.local.blobs import LocalObjectStore

    return LocalObjectStore(settings.data_dir / "blobs", synchronous=settings.embedded_synchronous)


def build_queue(settings: Settings) -> StepQueue:
    if settings.servicebus_connection or settings.servicebus_namespace:
        from shared.adapters.azure.servicebus import ServiceBusStepQueue

        return ServiceBusStepQueue.from_settings(settings)
    _require(settings, "Service Bus", "ServiceBusConnection__fullyQualifiedNamespace or ServiceBusConnection")
    from shared.adapters.local.queue import LocalQueue

    return LocalQueue(
        settings.data_dir / "queue.sqlite3",
        settings.agent_jobs_queue,
        lock_seconds=settings.queue_lock_seconds,
        max_delivery_count=settings.queue_max_delivery_count,
        duplicate_window_seconds=settings.queue_duplicate_window_seconds,
        synchronous=settings.embedded_synchronous,
    )


def build_index(settings: Settings) -> KnowledgeIndex:
    if settings.search_endpoint:
        from shared.adapters.azure.embeddings import embedder_from_settings
        from shared.adapters.azure.search import AzureKnowledgeIndex

        return AzureKnowledgeIndex.from_settings(settings, embed=embedder_from_settings(settings))
    _require(settings, "Azure AI Search", "SEARCH_ENDPOINT")
    from shared.adapters.local.search import LocalKnowledgeIndex

    index = LocalKnowledgeIndex(settings.data_dir / "search.sqlite3")
    if settings.search_mode == "hybrid":
        from shared.adapters.local.embeddings import load_encoder
        from shared.adapters.local.hybrid import HybridKnowledgeIndex

        hybrid = HybridKnowledgeIndex(index, settings.data_dir / "vectors.sqlite3", load_encoder().encode)
        if hybrid.needs_backfill():  # an index written in bm25 mode, or a crash between the two files
            threading.Thread(target=hybrid.backfill, name="vector-backfill", daemon=True).start()
        return hybrid
    return index


def build_model(settings: Settings) -> ChatModel:
    configured = (settings.azure_openai_endpoint and settings.azure_openai_deployment) or any(
        (settings.openai_base_url, settings.openai_api_key, settings.openai_model)
    )
    if configured:  # importing the openai SDK costs ~0.6 s; CLI calls on the offline model skip it
        from shared.adapters.azure.openai_model import OpenAIChatModel

        model = OpenAIChatModel.from_settings(settings)
        if model is not None:
            return model
    _require(settings, "a chat model", "AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_DEPLOYMENT (or OPENAI_BASE_URL)")
    from shared.adapters.local.offline_model import OfflineModel

    return OfflineModel(latency_ms=settings.offline_model_latency_ms)


def build_backends(settings: Settings | None = None) -> Backends:
    settings = settings or get_settings()
    from shared.tokens import count_message_tokens

    return Backends(
        settings=settings,
        objects=build_objects(settings),
        queue=build_queue(settings),
        index=build_index(settings),
        model=build_model(settings),
        count_tokens=count_message_tokens,
    )


_backends: Backends | None = None
_lock = threading.Lock()


def get_backends() -> Backends:
    """The process's backends, built once on first use (Functions imports the app before settings load)."""
    global _backends
    with _lock:
        if _backends is None:
            _backends = build_backends()
        return _backends


def reset_backends() -> None:
    global _backends
    with _lock:
        if _backends is not None:
            _backends.close()
        _backends = None


@contextmanager
def serving(b: Backends) -> Iterator[Backends]:
    """Make b the process's backends, the ones function_app.py's triggers use, for the block.

    For hosts that build their bundle themselves (test fixtures, benchmarks) rather than from
    the process environment.
    """
    global _backends
    with _lock:
        previous, _backends = _backends, b
    try:
        yield b
    finally:
        with _lock:
            _backends = previous
