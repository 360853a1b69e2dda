"""The composition root: Azure where its settings are, embedded otherwise, never silently in production."""

from __future__ import annotations

import pytest

from shared.bootstrap import build_backends
from shared.errors import ConfigurationError
from shared.settings import Settings


def settings(**values: str) -> Settings:
    return Settings.model_validate(values)


def test_embedded_by_default(tmp_path) -> None:  # type: ignore[no-untyped-def]
    b = build_backends(settings(DATA_DIR=str(tmp_path)))
    assert [type(p).__name__ for p in (b.objects, b.queue, b.index, b.model)] == [
        "LocalObjectStore",
        "LocalQueue",
        "LocalKnowledgeIndex",
        "OfflineModel",
    ]
    b.close()


def test_each_port_switches_on_its_own_settings(tmp_path, azurite_blob: str) -> None:  # type: ignore[no-untyped-def]
    b = build_backends(
        settings(
            DATA_DIR=str(tmp_path),
            AzureWebJobsStorage=azurite_blob,
            SEARCH_ENDPOINT="https://agent-search-dev.search.windows.net",
            SEARCH_API_KEY="k",
            OPENAI_BASE_URL="http://127.0.0.1:9/v1",
            OPENAI_MODEL="m",
        )
    )
    assert [type(p).__name__ for p in (b.objects, b.queue, b.index, b.model)] == [
        "AzureObjectStore",
        "LocalQueue",
        "AzureKnowledgeIndex",
        "OpenAIChatModel",
    ]


@pytest.mark.parametrize(
    ("present", "missing"),
    [
        ({}, "AzureWebJobsStorage"),
        ({"AzureWebJobsStorage__blobServiceUri": "https://x.blob.core.windows.net"}, "ServiceBusConnection"),
    ],
)
def test_production_refuses_to_fall_back(tmp_path, present: dict[str, str], missing: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigurationError, match=missing):
        build_backends(settings(APP_ENV="production", DATA_DIR=str(tmp_path), **present))
    assert not (tmp_path / "blobs").exists()


def test_an_embeddings_deployment_makes_search_hybrid(tmp_path, scripted_openai) -> None:  # type: ignore[no-untyped-def]
    b = build_backends(
        settings(
            DATA_DIR=str(tmp_path),
            SEARCH_ENDPOINT="https://s.search.windows.net",
            SEARCH_API_KEY="k",
            AZURE_OPENAI_ENDPOINT=scripted_openai.endpoint,
            AZURE_OPENAI_API_KEY="k",
            AZURE_OPENAI_EMBEDDING_DEPLOYMENT="embed",
        )
    )
    assert b.index._embed is not None  # type: ignore[attr-defined]
    assert "content_vector" in {f.name for f in b.index.index_definition().fields}  # type: ignore[attr-defined]
