"""The ASGI endpoint at /api/mcp: authenticates like REST, then hands the request to the MCP server.

The MCP SDK (and the server built on it, `shared.api.mcp_server`) is imported on the first MCP
request, not at start: it costs the process about 27 MB, which a deployment that never speaks MCP
should not pay.
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from shared.api.deps import backends_of
from shared.api.problems import problem_response
from shared.api.security import Caller, authenticate
from shared.engine.backends import Backends
from shared.errors import ServiceError

if TYPE_CHECKING:
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

__all__ = ["MCP_PATH", "McpEndpoint", "McpRequest", "current_request"]

MCP_PATH = "/api/mcp"


@dataclass(frozen=True)
class McpRequest:
    """Who is calling, and with which backends: what the MCP tools act as and on."""

    caller: Caller
    b: Backends


_current: contextvars.ContextVar[McpRequest] = contextvars.ContextVar("mcp_request")


def current_request() -> McpRequest:
    """The caller of the HTTP request that carries the MCP call being served."""
    return _current.get()


class McpEndpoint:
    """Authenticate like REST, then serve the request with the MCP transport.

    The transport's session manager needs a task group running on the serving event loop; it is
    started on the first request of each loop (the embedded runtime serves without ASGI lifespan).
    """

    def __init__(self) -> None:
        self._managers: dict[int, StreamableHTTPSessionManager] = {}
        self._lock = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            caller = await authenticate(request)
            b = backends_of(request)
        except ServiceError as error:
            await problem_response(error, scope.get("path"))(scope, receive, send)
            return
        manager = await self._manager()
        token = _current.set(McpRequest(caller, b))
        try:
            await manager.handle_request(scope, receive, send)
        finally:
            _current.reset(token)

    async def _manager(self) -> StreamableHTTPSessionManager:
        loop = asyncio.get_running_loop()
        async with self._lock:
            manager = self._managers.get(id(loop))
            if manager is None:
                from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
                from mcp.server.transport_security import TransportSecuritySettings

                from shared.api.mcp_server import build_server

                manager = StreamableHTTPSessionManager(
                    app=build_server()._lowlevel_server,  # noqa: SLF001 - the documented way to mount it ourselves
                    stateless=True,
                    json_response=True,
                    # API keys, not cookies, authenticate: a rebinding page has no key to send.
                    security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
                )
                started = asyncio.Event()
                loop.create_task(self._serve(manager, started))
                await started.wait()
                self._managers[id(loop)] = manager
            return manager

    @staticmethod
    async def _serve(manager: StreamableHTTPSessionManager, started: asyncio.Event) -> None:
        async with manager.run():
            started.set()
            await asyncio.Event().wait()  # until the loop ends
