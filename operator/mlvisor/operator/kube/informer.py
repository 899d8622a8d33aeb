"""List-then-watch of one kind (client-go's reflector), on the operator's own aiohttp session.

Each :class:`Informer` keeps one kind of one namespace (or of all namespaces) up to date in the
operator's memory: it lists the kind (one consistent list, decoded an item at a time as it
arrives), then watches from the list's resourceVersion
(with bookmarks, so a quiet watch still moves its resourceVersion on), and hands every object
to ``on_event(type, body)`` as soon as it is decoded, keeping nothing itself but each object's
name. What to keep of an object is the store's business (``store.py``: slim projections); the
decoded body is garbage as soon as ``on_event`` returns.

Why not kopf's watches (as until this change): kopf runs a processing cycle per event (a task
per object, its per-object memory, index plumbing, a thread hop for every synchronous index
function) before any mlvisor code sees the body; that was a third of the operator's samples
while creating 1,000 TrainingJobs, and kopf's per-object state was much of its resident set
(docs/operator.md, "The event pump"). A reflector is a loop over decoded lines.

What the loop guarantees, as client-go's does:

- **A complete picture before ``synced``**: the first list's objects are all handed over before
  the ``synced`` event is set; the caller holds reconciles back until every informer has synced,
  so no reconcile plans a job without its pods.
- **No event lost across a re-list**: a watch that ends (the server's ``timeoutSeconds``, a dropped
  connection) is re-opened from the last resourceVersion seen; one the server refuses as too old
  (410 Gone, as an answer or as an ERROR event) is replaced by a fresh list, and objects that
  vanished meanwhile are handed over as DELETED.
- **Bounded retries**: a failing list or watch is retried after 0.5 s doubling to 30 s, and the
  operator keeps serving from what it has.

Filtering by label is asked of the server (``labelSelector``) and checked again here, so a
server that ignores it (the test emulator) changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mlvisor.operator.kube.client import ApiError, Kube

logger = logging.getLogger(__name__)

OnEvent = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class Kind:
    """One watched kind: its API group path, plural, and the labels its objects must carry."""

    kind: str
    prefix: str
    """``/api/v1`` or ``/apis/GROUP/VERSION``."""
    plural: str
    labels: Mapping[str, str] | None = None

    def path(self, namespace: str | None) -> str:
        if namespace is None:
            return f"{self.prefix}/{self.plural}"
        return f"{self.prefix}/namespaces/{namespace}/{self.plural}"

    def selector(self) -> str | None:
        return ",".join(f"{k}={v}" for k, v in self.labels.items()) if self.labels else None

    def selects(self, body: Mapping[str, Any]) -> bool:
        if not self.labels:
            return True
        labels = (body.get("metadata") or {}).get("labels") or {}
        return all(labels.get(k) == v for k, v in self.labels.items())


class Informer:
    """List, then watch, one kind in one namespace (None: all), forever; ``run()`` until cancelled."""

    def __init__(
        self,
        kube: Kube,
        kind: Kind,
        namespace: str | None,
        on_event: OnEvent,
        *,
        server_timeout: int = 300,
        client_timeout: float = 330.0,
    ) -> None:
        self.kube = kube
        self.kind = kind
        self.namespace = namespace
        self.on_event = on_event
        self.server_timeout = max(1, int(server_timeout))
        self.client_timeout = client_timeout
        self.synced = asyncio.Event()
        self.resource_version: str | None = None
        self._known: dict[tuple[str, str], str] = {}
        """(namespace, name) -> uid of every object handed over and not deleted since."""

    def __repr__(self) -> str:
        return f"Informer({self.kind.kind} in {self.namespace or 'all namespaces'})"

    async def run(self) -> None:
        delay = 0.0
        while True:
            if delay:
                await asyncio.sleep(delay)
            try:
                if self.resource_version is None:
                    await self._list()
                    self.synced.set()
                started = asyncio.get_running_loop().time()
                await self._watch()
                # ended by the server or the client timeout: watch again at once, unless the
                # server keeps ending it at once (then a short pause, not a busy loop)
                delay = 0.5 if asyncio.get_running_loop().time() - started < 1.0 else 0.0
            except asyncio.CancelledError:
                raise
            except ApiError as e:
                if e.status == 410:  # too old: the next round lists afresh
                    self.resource_version = None
                    delay = 0.0
                    continue
                delay = min(30.0, max(0.5, delay * 2))
                logger.warning("%s: %s; again in %.1f s", self, e, delay)
            except Exception:  # a bug in a handler or a body we cannot read: never stop watching
                delay = min(30.0, max(0.5, delay * 2))
                logger.exception("%s failed; again in %.1f s", self)

    async def _list(self) -> None:
        path = self.kind.path(self.namespace)
        # Every list asks for the newest state (no resourceVersion: a consistent read), and in one
        # request. Since Kubernetes 1.31 (ConsistentListFromCache, beta and on) the API server
        # answers such a list from its watch cache once the cache has caught up with etcd, so it
        # is as fresh as a read from etcd and three to six times faster: 10,000 TrainingJobs in
        # 3.3 s instead of 21 s in pages of 500, 21,000 pods in 6.8 s instead of 20 s (curl;
        # bench/README.md, "Restart from one consistent list"). Pages cannot have that: in 1.33
        # every page after the first is read from etcd. Nor can resourceVersion 0 (client-go's
        # first list, also from the cache): its answer may be older than the writes of the
        # operator that ran before this one, and the crash-consistency test stopped settling
        # with it. The answer is decoded an item at a time as it arrives (client.ListDecoder),
        # so one list of 21,000 pods costs no more memory than a page did.
        query: dict[str, str] = {}
        selector = self.kind.selector()
        if selector:
            query["labelSelector"] = selector
        seen: set[tuple[str, str]] = set()
        metadata: dict[str, Any] = {}
        async for body in self.kube.list_items(path, query, metadata):
            body.setdefault("kind", self.kind.kind)
            if not self.kind.selects(body):
                continue
            meta = body.get("metadata") or {}
            key = (str(meta.get("namespace") or ""), str(meta.get("name")))
            seen.add(key)
            self._hand_over("MODIFIED" if key in self._known else "ADDED", body)
        version = metadata.get("resourceVersion")
        for key in [k for k in self._known if k not in seen]:  # deleted while we were not watching
            namespace, name = key
            self._hand_over("DELETED", {"kind": self.kind.kind, "metadata": {
                "namespace": namespace, "name": name, "uid": self._known[key]}})
        self.resource_version = str(version) if version else "0"

    async def _watch(self) -> None:
        query = {
            "resourceVersion": self.resource_version or "0",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.server_timeout),
        }
        selector = self.kind.selector()
        if selector:
            query["labelSelector"] = selector
        async for event in self.kube.watch(self.kind.path(self.namespace), query, self.client_timeout):
            kind = event.get("type")
            body = event.get("object") or {}
            if kind == "ERROR":
                code = int(body.get("code") or 0)
                raise ApiError(code, str(body.get("reason") or "Error"), str(body.get("message") or ""))
            version = (body.get("metadata") or {}).get("resourceVersion")
            if kind == "BOOKMARK":
                if version:
                    self.resource_version = str(version)
                continue
            if kind not in ("ADDED", "MODIFIED", "DELETED"):
                continue
            body.setdefault("kind", self.kind.kind)
            if not self.kind.selects(body):
                # relabelled out of the selection: gone as far as the operator is concerned
                meta = body.get("metadata") or {}
                if (str(meta.get("namespace") or ""), str(meta.get("name"))) in self._known:
                    self._hand_over("DELETED", body)
            else:
                self._hand_over(str(kind), body)
            if version:
                self.resource_version = str(version)

    def _hand_over(self, kind: str, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name")))
        if kind == "DELETED":
            self._known.pop(key, None)
        else:
            self._known[key] = str(meta.get("uid") or "")
        try:
            self.on_event(kind, body)
        except Exception:  # one object's trouble must not stop the stream of the others
            logger.exception("%s: handling %s %s/%s failed", self, kind, key[0], key[1])
