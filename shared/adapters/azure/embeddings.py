"""Query and chunk embeddings from an Azure OpenAI embeddings deployment, for hybrid search."""

from __future__ import annotations

from collections.abc import Callable

import openai
from azure.identity import DefaultAzureCredential, get_bearer_token_provider

from shared.adapters.azure.openai_model import AZURE_OPENAI_SCOPE
from shared.settings import Settings

Embed = Callable[[str], list[float]]


def embedder_from_settings(settings: Settings) -> Embed | None:
    """An embed(text) function when AZURE_OPENAI_EMBEDDING_DEPLOYMENT is set, else None (text-only search)."""
    deployment = settings.azure_openai_embedding_deployment
    if not (settings.azure_openai_endpoint and deployment):
        return None
    client = openai.AzureOpenAI(
        azure_endpoint=settings.azure_openai_endpoint,
        api_version=settings.azure_openai_api_version,
        api_key=settings.azure_openai_api_key or None,
        azure_ad_token_provider=None
        if settings.azure_openai_api_key
        else get_bearer_token_provider(DefaultAzureCredential(), AZURE_OPENAI_SCOPE),
        timeout=settings.model_timeout_seconds,
        max_retries=2,  # indexing is not a step: a short in-place retry is the simplest right thing
    )

    def embed(text: str) -> list[float]:
        return list(client.embeddings.create(model=deployment, input=text).data[0].embedding)

    return embed
