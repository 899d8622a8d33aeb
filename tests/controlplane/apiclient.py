"""The provisioner's own small async Kubernetes client (aiohttp, client certificates, list+watch).

The provisioner shares no client code with the operator under test, so a bug in one cannot
hide a bug in the other: this speaks the API directly, as an external provisioner's client-go does.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:400]}")
        self.status = status
        self.body = body


class Api:
    def __init__(self, url: str, pki: Path, identity: str) -> None:
        self.url = url
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / f"{identity}.crt"), str(pki / f"{identity}.key"))
        self._ssl = ctx
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=32),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
                      params: Mapping[str, str] | None = None, timeout: float = 30.0) -> dict[str, Any]:
        assert self._session is not None
        data = json.dumps(body) if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        async with self._session.request(method, self.url + path, data=data, headers=headers, params=params,
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            text = await r.text()
            if r.status >= 300:
                raise ApiError(r.status, text)
            return json.loads(text) if text else {}

    async def get(self, path: str, **params: str) -> dict[str, Any]:
        return await self.request("GET", path, params=params or None)

    async def watch(self, path: str, **params: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """List, then watch from the list's resourceVersion, for ever; relists after 410 Gone.

        Yields ("ADDED"|"MODIFIED"|"DELETED", object); the list yields its items as ADDED (and
        "SYNCED", {} once the list is delivered).
        """
        assert self._session is not None
        while True:
            listing = await self.get(path, **params)
            rv = listing["metadata"]["resourceVersion"]
            for item in listing.get("items") or []:
                yield "ADDED", item
            yield "SYNCED", {}
            while True:
                q = dict(params, watch="1", resourceVersion=rv, allowWatchBookmarks="true", timeoutSeconds="300")
                try:
                    async with self._session.get(self.url + path, params=q,
                                                 timeout=aiohttp.ClientTimeout(total=None, sock_read=330)) as r:
                        if r.status == 410:
                            break
                        if r.status >= 300:
                            raise ApiError(r.status, await r.text())
                        gone = False
                        async for line in r.content:
                            if not line.strip():
                                continue
                            ev = json.loads(line)
                            obj = ev.get("object") or {}
                            if ev.get("type") == "ERROR":
                                gone = obj.get("code") == 410
                                break
                            rv = obj.get("metadata", {}).get("resourceVersion", rv)
                            if ev.get("type") == "BOOKMARK":
                                continue
                            yield ev["type"], obj
                        if gone:
                            break
                except (TimeoutError, aiohttp.ClientError):
                    await asyncio.sleep(0.5)
