"""What AzureKnowledgeIndex sends to Azure AI Search, checked on the wire without a network.

An azure-core HttpTransport records each request the real SDK builds and answers with canned
JSON, so these tests pin the REST shapes (index definition, search body, key paging, batching)
that the live contract suite cannot see.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import ServiceRequestError
from azure.core.pipeline.transport import HttpTransport

# The documented base for transport responses; azure-core has no public in-memory response.
from azure.core.rest._http_response_impl import HttpResponseImpl

from shared.adapters.azure.search import AzureKnowledgeIndex, IndexingFailed, odata_string, scope_filter
from shared.contracts import Chunk
from shared.errors import DependencyUnavailable
from shared.settings import Settings

ENDPOINT = "https://agent-search-test.search.windows.net"
DIMENSIONS = 8


@dataclass
class Sent:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any

    @property
    def operation(self) -> str:
        """The REST operation, e.g. "PUT /indexes('knowledge')" or "POST /docs/search.index"."""
        tail = re.sub(r"^/indexes\('[^']*'\)", "", self.path)
        return f"{self.method} {tail or self.path}"


Reply = tuple[int, Any]


class RecordingTransport(HttpTransport):
    """Records every request and answers each with respond(request) -> (status, JSON body)."""

    def __init__(self, respond: Callable[[Sent], Reply]) -> None:
        self.respond = respond
        self.sent: list[Sent] = []

    def __enter__(self) -> RecordingTransport:
        return self

    def __exit__(self, *args: Any) -> None:
        pass

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, request: Any, **kwargs: Any) -> HttpResponseImpl:
        url = urlsplit(request.url)
        content = request.content
        body = json.loads(content) if content else None
        sent = Sent(request.method, unquote(url.path), parse_qs(url.query), dict(request.headers), body)
        self.sent.append(sent)
        status, payload = self.respond(sent)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        content_type = "text/plain" if isinstance(payload, bytes) else "application/json; charset=utf-8"
        return HttpResponseImpl(
            request=request,
            internal_response=io.BytesIO(data),
            status_code=status,
            reason="OK" if status < 400 else "Error",
            content_type=content_type,
            headers={"Content-Type": content_type},
            stream_download_generator=lambda response, pipeline, decompress, **kw: iter([data]),
        )

    def named(self, operation: str) -> list[Sent]:
        return [s for s in self.sent if s.operation == operation]


def echo_index(sent: Sent) -> Reply:
    """A service that accepts every request: index PUTs echo, indexing succeeds, searches find nothing."""
    if sent.operation == "POST /docs/search.index":
        return 200, {"value": [{"key": a["key"], "status": True, "statusCode": 201} for a in sent.body["value"]]}
    if sent.operation == "POST /docs/search.post.search":
        return 200, {"value": []}
    if sent.operation == "GET /docs/$count":
        return 200, b"0"
    if sent.method == "DELETE":
        return 204, b""
    return 200, sent.body or {}


def fake_embed(text: str) -> list[float]:
    return [float(len(text) % 7)] + [0.5] * (DIMENSIONS - 1)


def make_index(
    respond: Callable[[Sent], Reply] = echo_index, **options: Any
) -> tuple[AzureKnowledgeIndex, RecordingTransport]:
    transport = RecordingTransport(respond)
    index = AzureKnowledgeIndex(
        ENDPOINT, "knowledge", AzureKeyCredential("test-admin-key"), transport=transport, retry_total=0, **options
    )
    return index, transport


def chunks(doc_id: str, count: int) -> list[Chunk]:
    return [Chunk(doc_id=doc_id, chunk_id=n, title="T", content=f"passage {n}") for n in range(count)]


# --- the index definition -------------------------------------------------------------------------


def test_index_definition_without_embeddings_is_text_only() -> None:
    index, transport = make_index()
    index.ensure_index()

    put, unscoped = transport.sent
    assert put.method == "PUT" and put.path == "/indexes('knowledge')"
    assert put.headers["api-key"] == "test-admin-key"
    fields = {f["name"]: f for f in put.body["fields"]}
    assert list(fields) == [
        "key",
        "doc_id",
        "chunk_id",
        "title",
        "url",
        "content",
        "section",
        "page",
        "version",
        "scope",
    ]
    assert fields["version"]["filterable"] and not fields["section"]["searchable"]
    # The security filter's field: filterable, never searched as text.
    assert fields["scope"]["type"] == "Edm.String" and fields["scope"]["filterable"]
    assert not fields["scope"]["searchable"]
    # Then chunks from before scopes are looked for, to give them the shared scope.
    assert unscoped.operation == "POST /docs/search.post.search" and unscoped.body["filter"] == "scope eq null"
    assert fields["key"]["key"] is True and fields["key"]["type"] == "Edm.String"
    assert fields["key"]["filterable"] and fields["key"]["sortable"]  # export pages by key
    assert fields["doc_id"]["filterable"] and fields["doc_id"]["facetable"]
    assert fields["chunk_id"] == {**fields["chunk_id"], "type": "Edm.Int32", "filterable": True, "sortable": True}
    for name in ("title", "content"):
        assert fields[name]["searchable"] and fields[name]["analyzer"] == "ja.microsoft"
    assert not fields["url"]["searchable"]
    assert "vectorSearch" not in put.body and "semantic" not in put.body


def test_index_definition_with_embeddings_adds_vectors_and_semantic_ranking() -> None:
    index, transport = make_index(embed=fake_embed, dimensions=DIMENSIONS)
    index.ensure_index()

    body = transport.sent[0].body
    vector = next(f for f in body["fields"] if f["name"] == "content_vector")
    assert vector["type"] == "Collection(Edm.Single)"
    assert vector["dimensions"] == DIMENSIONS
    assert vector["searchable"] is True and vector["retrievable"] is False
    (profile,) = body["vectorSearch"]["profiles"]
    (algorithm,) = body["vectorSearch"]["algorithms"]
    assert vector["vectorSearchProfile"] == profile["name"]
    assert profile["algorithm"] == algorithm["name"] and algorithm["kind"] == "hnsw"
    assert algorithm["hnswParameters"]["metric"] == "cosine"
    (semantic,) = body["semantic"]["configurations"]
    assert body["semantic"]["defaultConfiguration"] == semantic["name"]
    assert semantic["prioritizedFields"]["titleField"] == {"fieldName": "title"}
    assert semantic["prioritizedFields"]["prioritizedContentFields"] == [{"fieldName": "content"}]


def test_from_settings_uses_the_configured_dimensions_and_key() -> None:
    settings = Settings(
        search_endpoint=ENDPOINT, search_api_key="from-settings", search_index_name="kb", embedding_dimensions=3
    )
    index = AzureKnowledgeIndex.from_settings(settings, embed=lambda text: [0.0, 0.0, 1.0])
    assert index.index_name == "kb"
    vector = next(f for f in index.index_definition().as_dict()["fields"] if f["name"] == "content_vector")
    assert vector["dimensions"] == 3


def test_from_settings_without_a_key_uses_managed_identity() -> None:
    from azure.identity import DefaultAzureCredential

    index = AzureKnowledgeIndex.from_settings(Settings(search_endpoint=ENDPOINT, search_api_key=None))
    assert isinstance(index.credential, DefaultAzureCredential)  # built, never asked for a token


def test_from_settings_without_an_endpoint_names_the_setting() -> None:
    with pytest.raises(ValueError, match="SEARCH_ENDPOINT"):
        AzureKnowledgeIndex.from_settings(Settings(search_endpoint=None))


# --- search ---------------------------------------------------------------------------------------


def found(sent: Sent) -> Reply:
    if sent.operation != "POST /docs/search.post.search":
        return echo_index(sent)
    return 200, {
        "value": [
            {
                "@search.score": 2.5,
                "@search.highlights": {"content": ["To <em>restore</em> the index, stop intake."]},
                "key": "runbook--c0003",
                "doc_id": "runbook",
                "chunk_id": 3,
                "title": "Runbook",
                "url": None,
                "content": "Backups run daily. To restore the index, stop intake.",
            },
            {
                "@search.score": 1.5,
                "key": "notes--c0000",
                "doc_id": "notes",
                "chunk_id": 0,
                "title": "Notes",
                "url": "https://x/notes",
                "content": "Nothing highlighted here. Restore drills run quarterly.",
            },
        ]
    }


def test_search_sends_text_filter_top_and_highlights() -> None:
    index, transport = make_index(found)
    hits = index.search("How do I restore?", top=2, doc_id="runbook")

    (sent,) = transport.named("POST /docs/search.post.search")
    assert sent.body["search"] == "How do I restore "
    assert sent.body["filter"] == "doc_id eq 'runbook'"
    assert sent.body["top"] == 2
    assert sent.body["highlight"] == "content"
    assert set(sent.body["select"].split(",")) == {
        "key",
        "doc_id",
        "chunk_id",
        "title",
        "url",
        "content",
        "section",
        "page",
        "version",
        "scope",
    }
    assert "vectorQueries" not in sent.body and "skip" not in sent.body
    assert [(h.doc_id, h.chunk_id, h.score) for h in hits] == [("runbook", 3, 2.5), ("notes", 0, 1.5)]
    assert hits[0].snippet == "To restore the index, stop intake."  # highlight tags removed
    assert hits[1].snippet == "Restore drills run quarterly."  # no highlight: the best sentence


def test_search_with_embeddings_is_hybrid() -> None:
    index, transport = make_index(found, embed=fake_embed, dimensions=DIMENSIONS)
    index.search("バックアップの復元手順は？", top=5)

    (sent,) = transport.named("POST /docs/search.post.search")
    assert sent.body["search"] == "バックアップの復元手順は？"
    (vector_query,) = sent.body["vectorQueries"]
    assert vector_query["kind"] == "vector"
    assert vector_query["fields"] == "content_vector"
    assert vector_query["vector"] == fake_embed("バックアップの復元手順は？")
    assert vector_query["k"] >= 5
    assert "filter" not in sent.body


def test_user_text_cannot_inject_query_syntax_or_filters() -> None:
    index, transport = make_index(found)
    index.search('-backup "restore* OR (x | y)', doc_id="it's")

    (sent,) = transport.named("POST /docs/search.post.search")
    assert not set(sent.body["search"]) & set('-"*()|')
    assert sent.body["filter"] == "doc_id eq 'it''s'"
    assert odata_string("a'b''c") == "'a''b''''c'"


# --- scopes: the security filter ------------------------------------------------------------------


def test_search_sends_the_scope_filter_beside_the_document_filter() -> None:
    index, transport = make_index(found)
    index.search("restore", scopes=["acme", "shared"])
    index.search("restore", doc_id="runbook", scopes=["acme", "shared"])
    index.search("restore", scopes=["globex"])

    both, narrowed, private = transport.named("POST /docs/search.post.search")
    assert both.body["filter"] == "(search.in(scope, 'acme,shared', ',') or scope eq null)"
    assert narrowed.body["filter"] == "doc_id eq 'runbook' and (search.in(scope, 'acme,shared', ',') or scope eq null)"
    # Without shared, chunks that have no scope (indexed before scopes) are not matched.
    assert private.body["filter"] == "search.in(scope, 'globex', ',')"


def test_get_chunks_sends_the_scope_filter() -> None:
    index, transport = make_index(KeyedService([]))
    index.get_chunks("runbook", 2, scopes=["acme", "shared"])

    (sent,) = transport.named("POST /docs/search.post.search")
    assert sent.body["filter"] == (
        "doc_id eq 'runbook' and chunk_id eq 2 and (search.in(scope, 'acme,shared', ',') or scope eq null)"
    )


def test_scope_values_are_escaped_and_cannot_split_the_list() -> None:
    assert scope_filter(["o'neil"]) == "search.in(scope, 'o''neil', ',')"
    # A scope holding the delimiter makes the filter pick another, so 'a,b' stays one value.
    assert scope_filter(["a,b", "shared"]) == "(search.in(scope, 'a,b|shared', '|') or scope eq null)"
    every = ",|;~ "
    assert scope_filter([f"x{every}", "y"]) == f"(scope eq 'x{every}' or scope eq 'y')"
    hostile = "x') or true or ('"
    assert scope_filter([hostile]) == "search.in(scope, " + odata_string(hostile) + ", ',')"
    assert odata_string(hostile) == "'x'') or true or ('''"


def test_no_scopes_sends_nothing_and_finds_nothing() -> None:
    index, transport = make_index(found)
    assert index.search("restore", scopes=[]) == []
    assert index.get_chunks("runbook", scopes=[]) == []
    assert transport.sent == []


def test_chunks_carry_their_scope_both_ways() -> None:
    index, transport = make_index()
    index.upsert([Chunk(doc_id="d", chunk_id=0, title="T", content="x", scope="acme")])
    (sent,) = transport.named("POST /docs/search.index")
    assert sent.body["value"][0]["scope"] == "acme"

    def legacy(sent: Sent) -> Reply:
        doc = {"key": "d--c0000", "doc_id": "d", "chunk_id": 0, "title": "T", "url": None, "content": "x"}
        return 200, {"value": [doc, {**doc, "key": "e--c0000", "doc_id": "e", "scope": "globex"}]}

    index, _ = make_index(legacy)
    assert [c.scope for c in index.export()] == ["shared", "globex"]  # no scope: indexed before scopes, shared


def test_ensure_index_gives_unscoped_chunks_the_shared_scope() -> None:
    keys = [c.key for c in chunks("old", 3)]
    index, transport = make_index(KeyedService(keys))
    assert index.adopt_unscoped() == 3
    (merge,) = transport.named("POST /docs/search.index")
    assert merge.body["value"] == [{"@search.action": "merge", "key": k, "scope": "shared"} for k in keys]


@pytest.mark.parametrize("query", ["", "   ", "*", '"', "-", "the of and"])
def test_queries_without_words_send_nothing(query: str) -> None:
    index, transport = make_index(found)
    assert index.search(query) == []
    assert transport.sent == []


# --- paging by key --------------------------------------------------------------------------------


class KeyedService:
    """Canned search pages over sorted keys that honour "key gt '...'" and top, as the service does."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = sorted(keys)

    def __call__(self, sent: Sent) -> Reply:
        if sent.operation != "POST /docs/search.post.search":
            return echo_index(sent)
        after = re.search(r"key gt '((?:[^']|'')*)'", sent.body.get("filter") or "")
        start = after.group(1).replace("''", "'") if after else ""
        keys = [k for k in self.keys if k > start][: sent.body["top"]]
        docs = [
            {
                "key": k,
                "doc_id": k.split("--c")[0],
                "chunk_id": int(k.split("--c")[1]),
                "title": "T",
                "url": None,
                "content": "x",
                "@search.score": 1.0,
            }
            for k in keys
        ]
        return 200, {"value": docs}


def test_export_pages_by_key_never_by_skip() -> None:
    keys = [c.key for c in chunks("doc", 2500)]
    index, transport = make_index(KeyedService(keys))

    first = index.export(size=2100)
    rest = index.export(after_key=first[-1].key, size=2100)

    assert [c.key for c in first + rest] == keys
    searches = transport.named("POST /docs/search.post.search")
    assert [s.body["top"] for s in searches] == [1000, 1000, 100, 1000]
    for s in searches:
        assert s.body["orderby"] == "key asc"
        assert "skip" not in s.body
    assert "filter" not in searches[0].body
    assert searches[1].body["filter"] == f"key gt '{keys[999]}'"
    assert searches[3].body["filter"] == f"key gt '{keys[2099]}'"


def test_get_chunks_filters_by_document_and_orders_by_chunk() -> None:
    index, transport = make_index(KeyedService([]))
    index.get_chunks("runbook")
    index.get_chunks("runbook", 4)

    whole, single = transport.named("POST /docs/search.post.search")
    assert whole.body["filter"] == "doc_id eq 'runbook'"
    assert whole.body["orderby"] == "chunk_id asc"
    assert single.body["filter"] == "doc_id eq 'runbook' and chunk_id eq 4"


def test_delete_document_finds_keys_by_filter_then_deletes_them() -> None:
    keys = [c.key for c in chunks("runbook", 3)]

    def respond(sent: Sent) -> Reply:
        if sent.operation == "POST /docs/search.post.search":
            return 200, {"value": [{"key": k, "@search.score": 1.0} for k in keys]}
        return echo_index(sent)

    index, transport = make_index(respond)
    assert index.delete_document("runbook") == 3

    (lookup,) = transport.named("POST /docs/search.post.search")
    assert lookup.body["filter"] == "doc_id eq 'runbook'"
    assert lookup.body["select"] == "key" and lookup.body["orderby"] == "key asc"
    (delete,) = transport.named("POST /docs/search.index")
    assert delete.body["value"] == [{"@search.action": "delete", "key": k} for k in keys]


# --- upsert ---------------------------------------------------------------------------------------


def test_upsert_sends_batches_of_upload_actions() -> None:
    index, transport = make_index()
    assert index.upsert(chunks("big", 1200)) == 1200

    batches = transport.named("POST /docs/search.index")
    assert [len(b.body["value"]) for b in batches] == [500, 500, 200]
    actions = [a for b in batches for a in b.body["value"]]
    assert {a["@search.action"] for a in actions} == {"upload"}
    assert [a["key"] for a in actions] == [c.key for c in chunks("big", 1200)]
    assert actions[0] == {
        "@search.action": "upload",
        "key": "big--c0000",
        "doc_id": "big",
        "chunk_id": 0,
        "title": "T",
        "url": None,
        "content": "passage 0",
        "section": None,
        "page": None,
        "version": None,
        "scope": "shared",
    }


def test_upsert_with_embeddings_sends_vectors() -> None:
    index, transport = make_index(embed=fake_embed, dimensions=DIMENSIONS)
    index.upsert(chunks("doc", 2))
    (batch,) = transport.named("POST /docs/search.index")
    assert [a["content_vector"] for a in batch.body["value"]] == [fake_embed("passage 0"), fake_embed("passage 1")]


def test_upsert_rejects_embeddings_of_the_wrong_size() -> None:
    index, _ = make_index(embed=lambda text: [0.0], dimensions=DIMENSIONS)
    with pytest.raises(ValueError, match="EMBEDDING_DIMENSIONS"):
        index.upsert(chunks("doc", 1))


def partly_rejected(status: int) -> Callable[[Sent], Reply]:
    def respond(sent: Sent) -> Reply:
        if sent.operation != "POST /docs/search.index":
            return echo_index(sent)
        results = [{"key": a["key"], "status": True, "statusCode": 201} for a in sent.body["value"]]
        results[1] = {"key": results[1]["key"], "status": False, "statusCode": status, "errorMessage": "rejected"}
        return 207, {"value": results}

    return respond


def test_upsert_names_the_rejected_chunks() -> None:
    index, _ = make_index(partly_rejected(400))
    with pytest.raises(IndexingFailed, match="doc--c0001") as failure:
        index.upsert(chunks("doc", 3))
    assert failure.value.keys == ["doc--c0001"]


def test_throttled_chunks_are_a_retryable_failure() -> None:
    index, _ = make_index(partly_rejected(503))
    with pytest.raises(DependencyUnavailable, match="doc--c0001"):
        index.upsert(chunks("doc", 3))


def test_first_upsert_creates_a_missing_index() -> None:
    created = False

    def respond(sent: Sent) -> Reply:
        nonlocal created
        if sent.operation == "POST /docs/search.index" and not created:
            return 404, {"error": {"code": "", "message": "The index 'knowledge' was not found."}}
        if sent.method == "PUT":
            created = True
        return echo_index(sent)

    index, transport = make_index(respond)
    index.upsert(chunks("doc", 2))
    assert [s.operation for s in transport.sent] == [
        "POST /docs/search.index",
        "PUT /indexes('knowledge')",
        "POST /docs/search.index",
    ]


# --- counts, resets, failures ---------------------------------------------------------------------


def test_count_reads_the_document_count() -> None:
    index, transport = make_index(lambda sent: (200, b"42"))
    assert index.count() == 42
    assert transport.sent[0].operation == "GET /docs/$count"


def test_reset_recreates_the_index() -> None:
    index, transport = make_index()
    index.reset()
    assert [s.method + " " + s.path for s in transport.sent] == [
        "DELETE /indexes('knowledge')",
        "PUT /indexes('knowledge')",
    ]


def test_unreachable_service_is_dependency_unavailable() -> None:
    def unreachable(sent: Sent) -> Reply:
        raise ServiceRequestError("connection refused")

    index, _ = make_index(unreachable)
    with pytest.raises(DependencyUnavailable, match="unreachable"):
        index.search("backup")
    with pytest.raises(DependencyUnavailable):
        index.upsert(chunks("doc", 1))
    with pytest.raises(DependencyUnavailable):
        index.ping()


def test_server_errors_are_dependency_unavailable() -> None:
    index, _ = make_index(lambda sent: (503, {"error": {"code": "ServiceUnavailable", "message": "busy"}}))
    with pytest.raises(DependencyUnavailable, match="503"):
        index.count()
