"""The MCP server through the official SDK's client over loopback: submit, follow, read the cited report
(tool and resource), search; the same keys and tenant scope as REST."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.fixtures.app import ingest_over_http

pytestmark = pytest.mark.slow
KEYS = '{"dev-local-key": {"tenant": "dev", "role": "operator"}, "key-acme": {"tenant": "acme"}}'


def client(url: str, key: str) -> Client:
    http = httpx2.AsyncClient(headers={"X-API-Key": key}, timeout=30)
    return Client(streamable_http_client(f"{url}/api/mcp", http_client=http))


def structured(result: Any) -> Any:
    assert not result.is_error, result
    data = result.structured_content
    return data.get("result", data) if isinstance(data, dict) and set(data) == {"result"} else data


async def research(url: str) -> dict[str, Any]:
    async with client(url, "dev-local-key") as mcp:
        names = {t.name for t in (await mcp.list_tools()).tools}
        assert {"submit_research", "get_job", "get_report", "search_knowledge"} <= names
        hits = structured(await mcp.call_tool("search_knowledge", {"query": "dead-lettered messages", "top": 3}))
        assert hits and {"doc_id", "chunk_id", "snippet"} <= set(hits[0])
        job = structured(await mcp.call_tool("submit_research", {"task": "How are dead-lettered messages handled?"}))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = structured(await mcp.call_tool("get_job", {"job_id": job["id"]}))
            if state["status"] in ("succeeded", "failed", "cancelled"):
                break
            await asyncio.sleep(0.1)
        assert state["status"] == "succeeded", state
        report = structured(await mcp.call_tool("get_report", {"job_id": job["id"]}))
        resource = await mcp.read_resource(f"report://{job['id']}")
        templates = await mcp.list_resource_templates()
        listed = await mcp.list_resources()
    async with client(url, "key-acme") as other:
        foreign = await other.call_tool("get_job", {"job_id": job["id"]})
        foreign_report = await other.call_tool("get_report", {"job_id": job["id"]})
        foreign_listed = await other.list_resources()
        # dev's operator uploaded the samples into dev's scope: acme's search does not see them.
        foreign_hits = structured(await other.call_tool("search_knowledge", {"query": "dead-lettered messages"}))
    return {
        "foreign_hits": foreign_hits,
        "job": job,
        "report": report,
        "resource": resource,
        "templates": templates,
        "listed": listed,
        "foreign": foreign,
        "foreign_report": foreign_report,
        "foreign_listed": foreign_listed,
    }


T = TypeVar("T")


def run_in_own_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on a thread of its own: a sync Playwright test earlier in the session leaves an event
    loop on the main thread, where asyncio.run refuses to start."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def test_mcp_client_submits_a_job_and_reads_its_cited_report(runtime) -> None:  # type: ignore[no-untyped-def]
    rt = runtime({"API_KEYS": KEYS})
    with rt.client() as rest:
        ingest_over_http(rest)
    out = run_in_own_loop(research(rt.url))
    report = out["report"]
    assert report["citations"] and "## Sources" in report["markdown"]
    for c in report["citations"]:
        assert f"[{c['n']}]" in report["markdown"] and c["quote"] in report["markdown"]
    with rt.client() as rest:
        same = rest.get(f"/api/jobs/{out['job']['id']}/report", headers={"Accept": "text/markdown"}).text
    assert report["markdown"] == same  # the same report as REST serves
    [text] = out["resource"].contents
    assert text.text == same and text.mime_type == "text/markdown"
    assert any(t.uri_template == "report://{job_id}" for t in out["templates"].resource_templates)
    assert f"report://{out['job']['id']}" in [str(r.uri) for r in out["listed"].resources]  # one per finished report
    assert out["foreign"].is_error and "no job" in str(out["foreign"].content)  # another tenant's job
    assert out["foreign_report"].is_error
    assert not [r for r in out["foreign_listed"].resources if str(r.uri).startswith("report://")]
    assert out["foreign_hits"] == []  # another tenant's documents


def test_mcp_needs_the_same_api_keys_as_rest(runtime) -> None:  # type: ignore[no-untyped-def]
    rt = runtime()
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
    assert httpx.post(f"{rt.url}/api/mcp", json=body, headers=headers).status_code == 401
    bad = httpx.post(f"{rt.url}/api/mcp", json=body, headers={**headers, "X-API-Key": "wrong"})
    assert bad.status_code == 401 and bad.headers["content-type"].startswith("application/problem+json")
