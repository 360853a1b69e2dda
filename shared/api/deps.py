"""What routes receive: the Backends bundle that `create_api(backends)` put on the app."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from shared.engine.backends import Backends

BackendsSource = Backends | Callable[[], Backends]


def backends_of(request: Request) -> Backends:
    """The app's backends; a zero-argument source (function_app.py's lazy bundle) is called on use."""
    source: BackendsSource = request.app.state.backends
    return source if isinstance(source, Backends) else source()


async def backends(request: Request) -> Backends:
    """backends_of as a dependency: async, so that it runs on the loop instead of hopping to the thread pool."""
    return backends_of(request)


BackendsDep = Annotated[Backends, Depends(backends)]
