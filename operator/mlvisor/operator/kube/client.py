"""A small async door to the Kubernetes API, built on the ``kubernetes`` client's transport.

The operator works with plain JSON dicts end to end: the builders produce manifest dicts, the
observers read pod and Deployment dicts, status is the api models' ``to_wire()``. The typed
``kubernetes`` 37 API classes would convert every object to and from pydantic models (slow to
build, strict on client side, lossy for fields the model does not know), so this module keeps
the client's configuration, authentication (kubeconfig, in-cluster token refresh), TLS and
connection pool, and sends dicts through ``ApiClient.call_api``.

Every call is blocking underneath and runs in a worker thread (``asyncio.to_thread``), so the
kopf event loop is never blocked. Errors come back as ``ApiError`` with the HTTP status, so the
callers can say "409 on create means it exists" and "404 on delete means it is gone".
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import orjson

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
    """The in-cluster service account if running in a pod, else the kubeconfig ($KUBECONFIG or ~/.kube/config).

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
        configuration: Any,
        timeout: tuple[float, float] = (10.0, 30.0),
        on_request: Callable[[str], None] | None = None,
    ) -> None:
        from kubernetes import client

        self._api = client.ApiClient(configuration)
        self._timeout = timeout
        self._on_request = on_request
        """Told the verb of every request before it is sent (the operator's request counter)."""

    def close(self) -> None:
        self._api.close()

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
        return await asyncio.to_thread(self._request, method, path, query, body, content_type)

    def _request(
        self, method: str, path: str, query: Mapping[str, str] | None, body: Any, content_type: str
    ) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        method, url, headers, payload, post = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(method, url, headers, payload, post, _request_timeout=self._timeout)
        except ApiException as e:
            raise ApiError(e.status or 0, str(e.reason or "Error"), str(e.body or ""), retry_after(e.headers)) from None
        except Exception as e:  # connection refused, timeouts: the caller retries later
            raise ApiError(0, type(e).__name__, str(e)) from None
        data = response.read() or b"{}"
        try:
            decoded = orjson.loads(data)
        except ValueError:
            decoded = {"message": data.decode(errors="replace")}
        if not 200 <= response.status <= 299:
            raise ApiError(response.status, str(response.reason or ""), str(decoded.get("message", "")),
                           retry_after(getattr(response, "headers", None)))
        return decoded if isinstance(decoded, dict) else {"items": decoded}


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
