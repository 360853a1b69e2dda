"""KnowledgeIndex over Azure AI Search (azure-search-documents 12).

The index definition lives here, in code: `ensure_index()` applies it, backups record it.
Reading every chunk pages by key (`key gt '...'` ordered by key), because $skip stops at 100,000.
With an embeddings function the index gains a vector field and search becomes hybrid (BM25 text
plus HNSW vectors, fused by the service).

Tenants own their knowledge: every chunk has a filterable `scope` (its tenant, or `shared`), and
every search and read given scopes sends `search.in(scope, 'acme,shared', ',')` as part of its
filter, the security-filter pattern of Azure AI Search's document-level access trimming. Chunks
written before the field existed have no scope and count as shared; `ensure_index()` adds the
field to a deployed index and gives them the shared scope.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from azure.core.credentials import AzureKeyCredential, TokenCredential
from azure.core.exceptions import (
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import HttpTransport
from azure.search.documents import IndexDocumentsBatch, SearchClient
from azure.search.documents.indexes import SearchIndexClient
from azure.search.documents.indexes.models import (
    HnswAlgorithmConfiguration,
    HnswParameters,
    SearchableField,
    SearchField,
    SearchFieldDataType,
    SearchIndex,
    SemanticConfiguration,
    SemanticField,
    SemanticPrioritizedFields,
    SemanticSearch,
    SimpleField,
    VectorSearch,
    VectorSearchProfile,
)
from azure.search.documents.models import IndexingResult, VectorizedQuery, VectorQuery

from shared.contracts import SHARED_SCOPE, Chunk, SearchHit
from shared.errors import DependencyUnavailable
from shared.settings import Settings
from shared.text import best_snippet, tokenize

Embed = Callable[[str], list[float]]
log = logging.getLogger("agent.search")

ANALYZER = "ja.microsoft"  # Japanese morphology; English words still index as words
VECTOR_FIELD = "content_vector"
VECTOR_PROFILE = "content-vector-profile"
HNSW_CONFIGURATION = "content-hnsw"
SEMANTIC_CONFIGURATION = "default"
CHUNK_FIELDS = ["key", "doc_id", "chunk_id", "title", "url", "content", "section", "page", "version", "scope"]
# Delimiters search.in() may split its list on: the first one no scope contains is used.
_IN_DELIMITERS = (",", "|", ";", "~", " ")
MAX_PAGE = 1000  # the service's largest page without continuation (whose next page uses $skip)
UPSERT_BATCH = 500  # the service takes at most 1000 actions (and 16 MB) per request
VECTOR_NEIGHBOURS = 50  # k of the vector leg of a hybrid query; fusion works better with k >> top

# Characters with a meaning in the simple query syntax. User text is searched as words, so
# these become spaces: '-x' must not mean NOT x, and a lone '"' must not open a phrase.
_QUERY_OPERATORS_RE = re.compile(r"[+\-&|!(){}\[\]^\"~*?:\\/]")
_HIGHLIGHT_TAG_RE = re.compile(r"</?em>")
_RETRYABLE_STATUS = {429, 500, 502, 503, 504}
_DEFAULT_CLIENT_OPTIONS: dict[str, Any] = {"connection_timeout": 10, "retry_total": 3, "retry_backoff_factor": 0.5}


class IndexingFailed(Exception):
    """The service rejected some chunks of an upsert or delete; names the keys and the reasons."""

    def __init__(self, failures: list[IndexingResult]) -> None:
        self.keys = [failure.key for failure in failures]
        reasons = "; ".join(f"{f.key}: {f.status_code} {f.error_message or ''}".strip() for f in failures[:10])
        more = f" (and {len(failures) - 10} more)" if len(failures) > 10 else ""
        super().__init__(f"Azure AI Search rejected {len(failures)} chunk(s): {reasons}{more}")


def odata_string(value: str) -> str:
    """An OData string literal: quoted, with embedded quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


def scope_filter(scopes: Sequence[str]) -> str:
    """The security filter for scopes: `search.in(scope, 'acme,shared', ',')`, values escaped.

    The shared scope also matches chunks that have no scope (indexed before scopes existed), which
    were published for everyone. Scopes that contain every delimiter fall back to `eq` comparisons.
    Callers pass at least one scope (no scopes means nothing can match; the adapter sends no query).
    """
    wanted = list(dict.fromkeys(scopes))
    delimiter = next((d for d in _IN_DELIMITERS if not any(d in s for s in wanted)), None)
    if delimiter is not None:
        condition = f"search.in(scope, {odata_string(delimiter.join(wanted))}, {odata_string(delimiter)})"
    else:
        condition = " or ".join(f"scope eq {odata_string(s)}" for s in wanted)
    if SHARED_SCOPE in wanted:
        condition = f"({condition} or scope eq null)"
    elif delimiter is None:
        condition = f"({condition})"
    return condition


def _where(*conditions: str | None) -> str | None:
    return " and ".join(c for c in conditions if c) or None


@contextmanager
def _unavailable_on_transport_errors(what: str) -> Iterator[None]:
    """Turn "could not reach the service" (and throttling/5xx) into DependencyUnavailable."""
    try:
        yield
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise DependencyUnavailable(f"Azure AI Search unreachable ({what}): {exc}") from exc
    except HttpResponseError as exc:
        if exc.status_code in _RETRYABLE_STATUS:
            raise DependencyUnavailable(f"Azure AI Search failed ({what}): {exc.status_code} {exc.reason}") from exc
        raise


def _chunk(document: dict[str, Any]) -> Chunk:
    return Chunk(
        doc_id=document["doc_id"],
        chunk_id=document["chunk_id"],
        title=document["title"],
        url=document.get("url"),
        content=document["content"],
        section=document.get("section"),
        page=document.get("page"),
        version=document.get("version"),
        scope=document.get("scope") or SHARED_SCOPE,
    )


class AzureKnowledgeIndex:
    """KnowledgeIndex over one Azure AI Search index; thread-safe (the SDK clients are).

    upsert replaces chunks by key (the "upload" action), so re-indexing a document that now has
    fewer chunks needs delete_document first. A missing index reads as empty and is created by the
    first upsert.
    """

    def __init__(
        self,
        endpoint: str,
        index_name: str,
        credential: AzureKeyCredential | TokenCredential,
        *,
        embed: Embed | None = None,
        dimensions: int = 1536,
        transport: HttpTransport[Any, Any] | None = None,
        batch_size: int = UPSERT_BATCH,
        **client_options: Any,
    ) -> None:
        if not 1 <= batch_size <= 1000:
            raise ValueError("batch_size must be 1..1000 (the service's limit per indexing request)")
        options = {**_DEFAULT_CLIENT_OPTIONS, **client_options}
        if transport is not None:
            options["transport"] = transport
        self.endpoint = endpoint
        self.index_name = index_name
        self.credential = credential
        self._embed = embed
        self._dimensions = dimensions
        self._batch_size = batch_size
        self._indexes = SearchIndexClient(endpoint, credential, **options)
        self._documents = SearchClient(endpoint, index_name, credential, **options)

    @classmethod
    def from_settings(cls, settings: Settings, embed: Embed | None = None) -> AzureKnowledgeIndex:
        """SEARCH_ENDPOINT with SEARCH_API_KEY, or with a managed identity when no key is set."""
        if not settings.search_endpoint:
            raise ValueError("SEARCH_ENDPOINT is not set; set it in local.settings.json or app settings")
        credential: AzureKeyCredential | TokenCredential
        if settings.search_api_key:
            credential = AzureKeyCredential(settings.search_api_key)
        else:
            from azure.identity import DefaultAzureCredential  # only the identity form needs it

            credential = DefaultAzureCredential()
        return cls(
            settings.search_endpoint,
            settings.search_index_name,
            credential,
            embed=embed,
            dimensions=settings.embedding_dimensions,
        )

    def close(self) -> None:
        self._documents.close()
        self._indexes.close()

    # --- the index itself ----------------------------------------------------------------------

    def index_definition(self) -> SearchIndex:
        """The index as code defines it: text fields analyzed as Japanese; vectors when embeddings are on."""
        fields: list[SearchField] = [
            SimpleField(name="key", type=SearchFieldDataType.STRING, key=True, filterable=True, sortable=True),
            SimpleField(name="doc_id", type=SearchFieldDataType.STRING, filterable=True, facetable=True),
            SimpleField(name="chunk_id", type=SearchFieldDataType.INT32, filterable=True, sortable=True),
            SearchableField(name="title", analyzer_name=ANALYZER),
            SimpleField(name="url", type=SearchFieldDataType.STRING),
            SearchableField(name="content", analyzer_name=ANALYZER),
            # Added after the first release: ensure_index() adds them to a deployed index (fields may be added).
            SimpleField(name="section", type=SearchFieldDataType.STRING),
            SimpleField(name="page", type=SearchFieldDataType.INT32),
            SimpleField(name="version", type=SearchFieldDataType.STRING, filterable=True),
            # The tenant that owns the chunk (or "shared"): every tenant's search filters on it.
            SimpleField(name="scope", type=SearchFieldDataType.STRING, filterable=True, facetable=True),
        ]
        if self._embed is None:
            return SearchIndex(name=self.index_name, fields=fields)
        fields.append(
            SearchField(
                name=VECTOR_FIELD,
                type="Collection(Edm.Single)",
                searchable=True,
                retrievable=False,  # never sent back: export/backup carry text, upsert re-embeds
                vector_search_dimensions=self._dimensions,
                vector_search_profile_name=VECTOR_PROFILE,
            )
        )
        return SearchIndex(
            name=self.index_name,
            fields=fields,
            vector_search=VectorSearch(
                algorithms=[
                    HnswAlgorithmConfiguration(name=HNSW_CONFIGURATION, parameters=HnswParameters(metric="cosine"))
                ],
                profiles=[VectorSearchProfile(name=VECTOR_PROFILE, algorithm_configuration_name=HNSW_CONFIGURATION)],
            ),
            semantic_search=SemanticSearch(
                default_configuration_name=SEMANTIC_CONFIGURATION,
                configurations=[
                    SemanticConfiguration(
                        name=SEMANTIC_CONFIGURATION,
                        prioritized_fields=SemanticPrioritizedFields(
                            title_field=SemanticField(field_name="title"),
                            content_fields=[SemanticField(field_name="content")],
                        ),
                    )
                ],
            ),
        )

    def ensure_index(self) -> None:
        """Create the index, or update it to the code's definition (fields may be added, not changed).

        Chunks indexed before the scope field get the shared scope (counted and logged).
        """
        self._apply_definition()
        self.adopt_unscoped()

    def _apply_definition(self) -> None:
        with _unavailable_on_transport_errors(f"create or update index {self.index_name}"):
            self._indexes.create_or_update_index(self.index_definition())

    def adopt_unscoped(self) -> int:
        """Give the shared scope to every chunk without one (merge actions); return how many."""
        keys = [c["key"] for c in self._pages("scope eq null", "key", select=["key"])]
        for start in range(0, len(keys), self._batch_size):
            batch = IndexDocumentsBatch()
            batch.add_merge_actions(
                [{"key": key, "scope": SHARED_SCOPE} for key in keys[start : start + self._batch_size]]
            )
            self._index(batch, "give unscoped chunks the shared scope")
        if keys:
            log.warning(
                "search index %s: %d chunk(s) from before scopes are now in the shared scope",
                self.index_name,
                len(keys),
                extra={"event": "index_scopes_migrated", "count": len(keys)},
            )
        return len(keys)

    def delete_index(self) -> None:
        with _unavailable_on_transport_errors(f"delete index {self.index_name}"):
            try:
                self._indexes.delete_index(self.index_name)
            except ResourceNotFoundError:
                pass

    # --- KnowledgeIndex ------------------------------------------------------------------------

    def upsert(self, chunks: list[Chunk]) -> int:
        for start in range(0, len(chunks), self._batch_size):
            batch = IndexDocumentsBatch()
            batch.add_upload_actions([self._document(chunk) for chunk in chunks[start : start + self._batch_size]])
            self._index(batch, f"upsert {len(chunks)} chunks")
        return len(chunks)

    def delete_document(self, doc_id: str) -> int:
        keys = [c["key"] for c in self._pages(f"doc_id eq {odata_string(doc_id)}", "key", select=["key"])]
        for start in range(0, len(keys), self._batch_size):
            batch = IndexDocumentsBatch()
            batch.add_delete_actions([{"key": key} for key in keys[start : start + self._batch_size]])
            self._index(batch, f"delete document {doc_id}")
        return len(keys)

    def replace_document(self, doc_id: str, chunks: list[Chunk]) -> int:
        """Upload the new version's chunks over the old keys, then delete the old version's surplus keys.

        Azure AI Search has no multi-document transaction: while the upload runs a reader may see
        some chunks of each version (each chunk whole, and never a chunk twice); once it returns
        only the new version is left.
        """
        new_keys = {chunk.key for chunk in chunks}
        old_keys = [c["key"] for c in self._pages(f"doc_id eq {odata_string(doc_id)}", "key", select=["key"])]
        self.upsert(chunks)
        stale = [key for key in old_keys if key not in new_keys]
        for start in range(0, len(stale), self._batch_size):
            batch = IndexDocumentsBatch()
            batch.add_delete_actions([{"key": key} for key in stale[start : start + self._batch_size]])
            self._index(batch, f"replace document {doc_id}")
        return len(chunks)

    def search(
        self, query: str, *, top: int = 5, doc_id: str | None = None, scopes: Sequence[str] | None = None
    ) -> list[SearchHit]:
        if top < 1 or not tokenize(query) or (scopes is not None and not scopes):
            return []  # nothing searchable (blank, operators, stop words; no scope), as in the embedded index
        vector_queries: list[VectorQuery] | None = None
        if self._embed is not None:
            vector = self._embed(query)
            neighbours = max(top, VECTOR_NEIGHBOURS)
            vector_queries = [VectorizedQuery(vector=vector, k_nearest_neighbors=neighbours, fields=VECTOR_FIELD)]
        with _unavailable_on_transport_errors("search"):
            try:
                results = self._documents.search(
                    _QUERY_OPERATORS_RE.sub(" ", query),
                    filter=_where(
                        f"doc_id eq {odata_string(doc_id)}" if doc_id is not None else None,
                        scope_filter(scopes) if scopes is not None else None,
                    ),
                    top=top,
                    select=CHUNK_FIELDS,
                    highlight_fields="content",
                    vector_queries=vector_queries,
                )
                hits = []
                for result in results:
                    hits.append(self._hit(result, query))
                    if len(hits) == top:
                        break
                return hits
            except ResourceNotFoundError:
                return []

    def get_chunks(
        self, doc_id: str, chunk_id: int | None = None, *, scopes: Sequence[str] | None = None
    ) -> list[Chunk]:
        if scopes is not None and not scopes:
            return []
        where = _where(
            f"doc_id eq {odata_string(doc_id)}",
            f"chunk_id eq {int(chunk_id)}" if chunk_id is not None else None,
            scope_filter(scopes) if scopes is not None else None,
        )
        return [_chunk(document) for document in self._pages(where, "chunk_id")]

    def export(self, *, after_key: str | None = None, size: int = 1000) -> list[Chunk]:
        return [_chunk(document) for document in self._pages(None, "key", after=after_key, limit=size)]

    def count(self) -> int:
        with _unavailable_on_transport_errors("count"):
            try:
                return int(self._documents.get_document_count())
            except ResourceNotFoundError:
                return 0

    def definition(self) -> dict[str, Any]:
        """The deployed definition (what a restore must recreate); the code's when the index is missing."""
        with _unavailable_on_transport_errors(f"get index {self.index_name}"):
            try:
                return dict(self._indexes.get_index(self.index_name).as_dict())
            except ResourceNotFoundError:
                return dict(self.index_definition().as_dict())

    def reset(self) -> None:
        # Dropping and recreating is one request each, where deleting by key is one per 1000 chunks.
        self.delete_index()
        self._apply_definition()

    def ping(self) -> None:
        self.count()

    # --- helpers -------------------------------------------------------------------------------

    def _document(self, chunk: Chunk) -> dict[str, Any]:
        document: dict[str, Any] = {
            "key": chunk.key,
            "doc_id": chunk.doc_id,
            "chunk_id": chunk.chunk_id,
            "title": chunk.title,
            "url": chunk.url,
            "content": chunk.content,
            "section": chunk.section,
            "page": chunk.page,
            "version": chunk.version,
            "scope": chunk.scope,
        }
        if self._embed is not None:
            vector = self._embed(chunk.content)
            if len(vector) != self._dimensions:
                raise ValueError(
                    f"the embeddings have {len(vector)} dimensions but the index expects {self._dimensions}; "
                    "set EMBEDDING_DIMENSIONS to the embedding model's size"
                )
            document[VECTOR_FIELD] = vector
        return document

    def _index(self, batch: IndexDocumentsBatch, what: str) -> None:
        """Send one indexing batch; create a missing index once; raise on any rejected action."""
        with _unavailable_on_transport_errors(what):
            try:
                results = self._documents.index_documents(batch)
            except ResourceNotFoundError:
                self._apply_definition()  # a new index: nothing in it predates scopes
                results = self._documents.index_documents(batch)
        failures = [result for result in results if not result.succeeded]
        if failures and all(failure.status_code in _RETRYABLE_STATUS for failure in failures):
            keys = ", ".join(failure.key for failure in failures[:10])
            raise DependencyUnavailable(f"Azure AI Search throttled {len(failures)} chunk(s) ({what}): {keys}")
        if failures:
            raise IndexingFailed(failures)

    def _pages(
        self,
        where: str | None,
        order_field: str,
        *,
        after: str | int | None = None,
        limit: int | None = None,
        select: list[str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every document matching where, in order_field order, paged by "order_field gt last" (never $skip)."""
        remaining = limit
        while remaining is None or remaining > 0:
            page_size = MAX_PAGE if remaining is None else min(MAX_PAGE, remaining)
            conditions = [c for c in (where, self._after(order_field, after)) if c]
            with _unavailable_on_transport_errors(f"read {self.index_name}"):
                try:
                    results = self._documents.search(
                        "*",
                        filter=" and ".join(conditions) or None,
                        order_by=[f"{order_field} asc"],
                        top=page_size,
                        select=select or CHUNK_FIELDS,
                    )
                    page = []
                    for result in results:
                        page.append(result)
                        if len(page) == page_size:
                            break  # never let the SDK follow a continuation (it pages with $skip)
                except ResourceNotFoundError:
                    return
            yield from page
            if len(page) < page_size:
                return
            after = page[-1][order_field]
            if remaining is not None:
                remaining -= len(page)

    @staticmethod
    def _after(field: str, after: str | int | None) -> str | None:
        if after is None:
            return None
        value = odata_string(after) if isinstance(after, str) else str(int(after))
        return f"{field} gt {value}"

    @staticmethod
    def _hit(result: dict[str, Any], query: str) -> SearchHit:
        highlights = (result.get("@search.highlights") or {}).get("content") or []
        if highlights:
            snippet = _HIGHLIGHT_TAG_RE.sub("", highlights[0])
        else:
            snippet = best_snippet(result["content"], query)
        return SearchHit(
            doc_id=result["doc_id"],
            chunk_id=result["chunk_id"],
            title=result["title"],
            url=result.get("url"),
            score=float(result.get("@search.score") or 0.0),
            snippet=snippet,
            section=result.get("section"),
            page=result.get("page"),
            version=result.get("version"),
        )
