"""A small async door to the Kubernetes API: aiohttp on the event loop, plain JSON dicts.

The operator works with plain JSON dicts end to end: the builders produce manifest dicts, the
observers read pod and Deployment dicts, status is the api models' ``to_wire()``. The typed
``kubernetes`` API classes would convert every object to and from models (slow to build, strict
on the client side, lossy for fields the model does not know), and since the operator logs in
with ``connection.py`` it does not load that package at all: where the server is, the login
(a bearer token asked for before each request, or a client certificate) and TLS (CA, hostname,
``tls-server-name``) come from a :class:`~mlvisor.operator.kube.connection.Connection`.

Requests go out through one aiohttp session on the operator's own event loop (aiohttp is kopf's
transport too), at most ``max_in_flight`` at once: no thread per request. Until this change
every write went through the synchronous client in ``asyncio.to_thread``: a thread hop and a
urllib3 request each, six at a time on 2 cores (the default executor), which was the largest
cost left in the profile of a burst (docs/operator.md). Errors come back as ``ApiError`` with
the HTTP status, so the callers can say "409 on create means it exists" and "404 on delete
means it is gone"; a 429's Retry-After is kept for the work queue.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from mlvisor.operator.kube.connection import Connection

MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """An HTTP error answered by the API server (or a transport failure, status 0)."""

    def __init__(self, status: int, reason: str, message: str = "", retry_after: float | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        """Seconds the server asked to wait (Retry-After of a 429 or 503), if it said."""


def retry_after(headers: Any) -> float | None:
    """The Retry-After header in seconds (API priority and fairness sends whole seconds), else None."""
    try:
        value = headers.get("Retry-After") if headers is not None else None
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


def load_configuration(kubeconfig: str | None = None) -> Any:
    """The ``kubernetes`` package's configuration (``mlvisor upload`` uses its typed client and exec streams).

    The in-cluster service account if running in a pod, else the kubeconfig ($KUBECONFIG or
    ~/.kube/config). The operator does not use it: ``connection.connect`` logs in without that package.

    The kubeconfig path is read from the environment at call time, not at import time (the
    ``kubernetes`` library freezes ``$KUBECONFIG`` when it is imported).
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        config.load_kube_config(config_file=path, client_configuration=configuration, persist_config=False)
    return configuration


class Kube:
    """Async get/list/create/patch/delete of JSON objects by API path."""

    def __init__(
        self,
        connection: Connection,
        timeout: tuple[float, float] = (10.0, 30.0),
        on_request: Callable[[str], None] | None = None,
        max_in_flight: int = 32,
    ) -> None:
        self._connection = connection
        self._host = connection.host.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(sock_connect=timeout[0], sock_read=timeout[1])
        self._on_request = on_request
        """Told the verb of every request before it is sent (the operator's request counter)."""
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._max_in_flight = max_in_flight
        self._session: aiohttp.ClientSession | None = None
        self._watch_session: aiohttp.ClientSession | None = None
        """Watches hold their connection for minutes: a pool of their own, outside ``max_in_flight``."""
        self._ssl = connection.ssl_context() if self._host.startswith("https:") else None

    async def close(self) -> None:
        for session in (self._session, self._watch_session):
            if session is not None:
                await session.close()
        self._session = self._watch_session = None

    async def get(self, path: str) -> dict[str, Any]:
        return await self.request("GET", path)

    async def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector} if label_selector else None
        return list((await self.request("GET", path, query=query, verb="LIST")).get("items") or [])

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body=body)

    async def patch(self, path: str, body: Any, content_type: str = MERGE_PATCH) -> dict[str, Any]:
        return await self.request("PATCH", path, body=body, content_type=content_type)

    async def delete(self, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return await self.request("DELETE", path, body=body)

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        verb: str | None = None,
    ) -> dict[str, Any]:
        """``verb``: what the request counts as (LIST for a GET of a collection), ``method`` by default."""
        if self._on_request is not None:
            self._on_request(verb or method)
        headers = self._headers()
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = orjson.dumps(body)
        async with self._in_flight:
            try:
                async with self._client().request(
                    method, self._host + path, params=dict(query) if query else None, data=data, headers=headers,
                    **self._transport(),
                ) as response:
                    payload = await response.read()
                    status, reason, answer_headers = response.status, response.reason, response.headers
            except (TimeoutError, aiohttp.ClientError, OSError) as e:  # refused, reset, timeouts: retried later
                raise ApiError(0, type(e).__name__, str(e)) from None
        decoded = _decode(payload)
        if not 200 <= status <= 299:
            raise _refused(status, reason, decoded, answer_headers)
        return decoded if isinstance(decoded, dict) else {"items": decoded}

    async def watch(
        self, path: str, query: Mapping[str, str], client_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of a watch (``?watch=true`` is added), one decoded dict per line, until the server ends it.

        ``client_timeout``: seconds without a byte from the server after which the watch counts as
        dead (a silently dropped connection never ends otherwise); then ``ApiError(0, ...)``. An
        HTTP error answer (a 410 when the resourceVersion is too old) is an ``ApiError`` too.
        Lines are split here rather than by aiohttp's ``readline``, which refuses lines over 64 KiB
        (a resource with a large status is one such line).
        """
        if self._on_request is not None:
            self._on_request("WATCH")
        headers = self._headers()
        if self._watch_session is None or self._watch_session.closed:
            self._watch_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(sock_connect=self._timeout.sock_connect, sock_read=client_timeout),
            )
        try:
            async with self._watch_session.get(
                self._host + path, params={**query, "watch": "true"}, headers=headers, **self._transport(),
            ) as response:
                if not 200 <= response.status <= 299:
                    decoded = _decode(await response.read())
                    raise _refused(response.status, response.reason, decoded, response.headers)
                pending = b""
                async for chunk in response.content.iter_any():
                    pending += chunk
                    if b"\n" not in chunk:
                        continue
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield orjson.loads(line)
                if pending.strip():
                    yield orjson.loads(pending)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise ApiError(0, type(e).__name__, str(e)) from None

    def _transport(self) -> dict[str, Any]:
        """TLS, proxy and server name of every request and watch."""
        return {
            "ssl": self._ssl if self._ssl is not None else True,
            "proxy": self._connection.proxy,
            "server_hostname": self._connection.tls_server_name,
        }

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        # Asked before each request: a rotated service-account token or an exec plugin's refresh is picked up.
        authorization = self._connection.authorization()
        if authorization:
            headers["Authorization"] = authorization
        return headers

    def _client(self) -> aiohttp.ClientSession:
        """The session, made on first use: it belongs to the running event loop."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_in_flight),
                timeout=self._timeout,
            )
        return self._session


def _decode(payload: bytes) -> Any:
    """An answer's JSON; a body that is not JSON becomes ``{"message": its text}``."""
    try:
        return orjson.loads(payload or b"{}")
    except ValueError:
        return {"message": payload.decode(errors="replace")}


def _refused(status: int, reason: str | None, decoded: Any, headers: Any) -> ApiError:
    """The error of a non-2xx answer: its status, the Status object's message, its Retry-After."""
    message = decoded.get("message", "") if isinstance(decoded, dict) else ""
    return ApiError(status, str(reason or ""), str(message), retry_after(headers))


# --------------------------------------------------------------------------- paths


def _q(part: str) -> str:
    return quote(part, safe="")


def core_path(plural: str, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    """/api/v1/namespaces/NS/PLURAL[/NAME[/SUB]] (pods, services, events)."""
    return _join(f"/api/v1/namespaces/{_q(namespace)}/{plural}", name, subresource)


def group_path(
    group: str, version: str, plural: str, namespace: str, name: str | None = None, subresource: str | None = None
) -> str:
    """/apis/GROUP/VERSION/namespaces/NS/PLURAL[/NAME[/SUB]] (deployments, custom resources)."""
    return _join(f"/apis/{group}/{version}/namespaces/{_q(namespace)}/{plural}", name, subresource)


def _join(base: str, name: str | None, subresource: str | None) -> str:
    if name is None:
        return base
    return f"{base}/{_q(name)}" + (f"/{subresource}" if subresource else "")
