"""The model server in this process: its ASGI app behind an httpx client, for unit tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from mlvisor.server.app import create_app
from mlvisor.server.settings import Settings


async def wait_ready(client: httpx.AsyncClient, want: int = 200, timeout: float = 20.0) -> httpx.Response:
    """Poll /v2/health/ready until it answers ``want`` with the model loaded."""
    deadline = time.monotonic() + timeout
    while True:
        r = await client.get("/v2/health/ready")
        if r.status_code == want and "model is loading" not in r.text:
            return r
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready in {timeout}s: {r.status_code} {r.text}")
        await asyncio.sleep(0.01)


async def serve(model_dir: Path, **kw: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The app for ``model_dir`` with its lifespan running (no gRPC listener unless asked)."""
    kw.setdefault("grpc_port", 0)
    app = create_app(Settings(model_dir=model_dir, **kw))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, app
