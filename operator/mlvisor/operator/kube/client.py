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
import codecs
import json
import os
import re
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

    async def list_items(
        self, path: str, query: Mapping[str, str], metadata: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """The items of a LIST one at a time, decoded as the answer arrives; ``metadata`` gets the list's.

        A list (the informers ask for each kind whole: 264 MB of JSON for 21,000 pods) is never
        decoded at once: at most one item beyond what the caller has taken (:class:`ListDecoder`).
        """
        if self._on_request is not None:
            self._on_request("LIST")
        headers = self._headers()
        async with self._in_flight:
            try:
                async with self._client().get(
                    self._host + path, params=dict(query), headers=headers, **self._transport()
                ) as response:
                    if not 200 <= response.status <= 299:
                        decoded = _decode(await response.read())
                        raise _refused(response.status, response.reason, decoded, response.headers)
                    decoder = ListDecoder()
                    async for chunk in response.content.iter_any():
                        for item in decoder.feed(chunk):
                            yield item
                    for item in decoder.feed(b"", final=True):
                        yield item
                    metadata.update(decoder.metadata)
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                raise ApiError(0, type(e).__name__, str(e)) from None

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


_WHITESPACE = re.compile(r"[ \t\r\n]*")
"""JSON's whitespace, skipped in one C call (a pretty-printed list has a lot of it)."""


class ListDecoder:
    """The items of a Kubernetes list (``{..., "metadata": {...}, "items": [...]}``) from its JSON in pieces.

    Only the list's own object is walked here; each top-level value (the metadata, each item)
    is decoded whole by the standard library's C scanner (``raw_decode``) once its text is
    complete. A value cut by the end of a piece fails to decode and is tried again with the
    next piece; after the last piece that is an error.
    """

    def __init__(self) -> None:
        self.metadata: dict[str, Any] = {}
        self._text = ""
        self._pos = 0
        self._state = "start"
        self._key = ""
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._json = json.JSONDecoder()

    def feed(self, data: bytes, final: bool = False) -> list[dict[str, Any]]:
        self._text = self._text[self._pos:] + self._utf8.decode(data, final)
        self._pos = 0
        items: list[dict[str, Any]] = []
        while self._step(items):
            pass
        if final and self._state != "done":
            raise ApiError(0, "IncompleteList", f"the list's JSON ended early ({self._text[self._pos:][:80]!r})")
        return items

    def _step(self, items: list[dict[str, Any]]) -> bool:
        """Take one token or value; False when the text so far has nothing complete left."""
        text, pos = self._text, self._skip()
        if pos >= len(text) or self._state == "done":
            return False
        char = text[pos]
        if self._state == "start":
            if char != "{":
                raise ApiError(0, "NotAList", f"expected a JSON object, found {text[pos:pos + 80]!r}")
            self._pos, self._state = pos + 1, "key"
            return True
        if self._state in ("key", "items") and char == ",":
            self._pos = pos + 1
            return True
        if self._state == "key" and char == "}":
            self._pos, self._state = pos + 1, "done"
            return True
        if self._state == "items" and char == "]":
            self._pos, self._state = pos + 1, "key"
            return True
        if self._state == "value" and self._key == "items" and char == "[":
            self._pos, self._state = pos + 1, "items"
            return True
        try:
            value, end = self._json.raw_decode(text, pos)
        except json.JSONDecodeError:
            return False  # cut by the end of this piece
        if end >= len(text) and not isinstance(value, (dict, list, str)):
            return False  # a number or literal may go on in the next piece
        if self._state == "key":
            colon = self._after_colon(end)
            if colon is None:
                return False
            end, self._key, self._state = colon, str(value), "value"
        elif self._state == "value":
            if self._key == "metadata" and isinstance(value, dict):
                self.metadata = value
            self._state = "key"  # any other value of the list's own ("kind", "items": null) is not kept
        elif isinstance(value, dict):  # an item
            items.append(value)
        self._pos = end
        return True

    def _skip(self) -> int:
        self._pos = _WHITESPACE.match(self._text, self._pos).end()  # type: ignore[union-attr]
        return self._pos

    def _after_colon(self, end: int) -> int | None:
        text = self._text
        end = _WHITESPACE.match(text, end).end()  # type: ignore[union-attr]
        if end >= len(text):
            return None
        if text[end] != ":":
            raise ApiError(0, "NotAList", f"expected ':' after a key, found {text[end:end + 80]!r}")
        return end + 1


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
