"""A Kubernetes API emulator good enough for the real operator: kmock 0.8 plus what kopf needs.

The integration tier runs the real ``mlvisor operator`` process (kopf, the ``kubernetes``
client, real HTTP and watch streams) against this emulator on 127.0.0.1, and the tests play
the kubelet and the controllers. Stock kmock 0.8 lacks what a kopf operator relies on, so this
subclass adds it:

- uid, creationTimestamp, generation and resourceVersion on every object; generation bumps
  when anything but metadata/status changes; 409 on a stale resourceVersion in a merge patch,
  422 on a failed JSON-patch ``test``;
- the status subresource: ``/status`` changes only status, the main endpoint never does;
- no replay of objects older than a watch's ``?resourceVersion=`` (kopf would re-process them);
- background garbage collection of dependents through ownerReferences, including objects
  created with an ownerReference to an owner that is already gone (a reconcile racing the
  owner's deletion does that; the real garbage collector deletes them);
- equality ``labelSelector`` on lists (stock kmock ignores selectors, which would hide a
  missing selector in the operator);
- ``/api/v1/namespaces`` served (stock parsing answers 500 there).

It reaches into kmock internals, so kmock is pinned to 0.8 in pyproject. What it still does not
do (and what tests/cluster/ therefore covers on a real cluster): schema validation, defaulting
and pruning, strategic merge, server-side apply, PUT, controllers, the scheduler, the kubelet.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import threading
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import jsonpatch
import kmock
from kmock._internal import dicts, enums, parsing

_stock_parse_path = parsing.parse_path


def _parse_path_with_namespaces(path: str) -> Any:
    """kmock 0.8 treats ``namespaces`` as the namespace marker, so /api/v1/namespaces[/NAME] fails."""
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
        return parsing.ParsedPath("", "v1", "namespaces", None, parts[3] if len(parts) == 4 else None)
    return _stock_parse_path(path)


parsing.parse_path = _parse_path_with_namespaces

_WRITES = (enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def _error(code: int, reason: str, message: str = "") -> kmock.KubernetesError:
    return kmock.KubernetesError(status=code, reason=reason, message=message or reason, details={})


def _matches_selector(obj: Mapping[str, Any], selector: str) -> bool:
    """Equality-based label selectors (``a=b,c=d``, ``a!=b``, bare ``a``), as the operator uses them."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term not in labels:
            return False
    return True


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator with resourceVersions, uids, the status subresource, no-replay watches and GC."""

    _rv: int = attrs.field(default=0, init=False)
    deletions: list[tuple[str, str | None, str]] = attrs.field(factory=list, init=False)
    """(resource, namespace, name) of every object deleted, in order (for ordering assertions)."""

    async def _handle(self, request: Any) -> Any:
        # Apply writes here with our semantics; the stock fallbacks then render the stored object.
        if request.resource is not None and request.action in _WRITES:
            async with self._lock:
                await self._write(request)
        return await kmock.KubernetesScaffold._handle(self, request)

    async def _write(self, request: Any) -> None:
        key = (request.resource, request.namespace, request.name)
        if request.action == enums.action.CREATE:
            body = dict(request.data)
            meta = body["metadata"] = dict(body.get("metadata") or {})
            if request.namespace:
                meta["namespace"] = request.namespace
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            key = (request.resource, meta.get("namespace"), meta["name"])
            if key in self._objects and not self._objects[key].deleted:
                raise _error(409, "AlreadyExists", f"{meta['name']} already exists")
            meta.update(uid=str(uuid.uuid4()), generation=1, creationTimestamp=_now())
            if self._has_status_subresource(request.resource):
                body.pop("status", None)
            if key not in self._objects:
                self._objects[key] = []
            await self._save(key, body, "ADDED")
            if self._owners_gone(body):  # the garbage collector deletes dependents of a deleted owner
                await self._delete(key)
            return
        if key not in self._objects or self._objects[key].deleted:
            raise _error(404, "NotFound", f"{request.name} not found")
        if request.action == enums.action.DELETE:
            await self._delete(key)
            return
        old = self._objects[key].raw
        if not isinstance(request.data, (dict, list)):
            raise _error(415, "UnsupportedMediaType", "server-side apply is not emulated")
        if isinstance(request.data, list):  # JSON patch, e.g. kopf's finalizer patch with a `test`
            try:
                new = jsonpatch.apply_patch(old, request.data)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                raise _error(422, "Invalid", str(e)) from None
        else:  # merge patch (strategic merge is approximated: lists are replaced)
            wanted_rv = (request.data.get("metadata") or {}).get("resourceVersion")
            if wanted_rv is not None and wanted_rv != old["metadata"]["resourceVersion"]:
                raise _error(409, "Conflict", "the object has been modified; please apply your changes to the latest version")
            new = dict(dicts.patch_dict(old, request.data))
        if self._has_status_subresource(request.resource):
            source, rest = (new, old) if request.subresource == "status" else (old, new)
            new = {k: v for k, v in rest.items() if k != "status"}
            if "status" in source:
                new["status"] = source["status"]
        meta = new["metadata"] = dict(new["metadata"])
        for field in ("uid", "creationTimestamp", "generation", "deletionTimestamp", "namespace", "name"):
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
        spec_of = lambda o: {k: v for k, v in o.items() if k not in ("metadata", "status")}  # noqa: E731
        if spec_of(new) != spec_of(old):
            meta["generation"] = int(meta.get("generation") or 0) + 1
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new != old:
            await self._save(key, new, "MODIFIED")
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            await self._delete(key)

    def _owners_gone(self, body: dict[str, Any]) -> bool:
        uids = {ref.get("uid") for ref in body["metadata"].get("ownerReferences") or []}
        if not uids:
            return False
        live = {o.raw["metadata"].get("uid") for o in self._objects.values() if not o.deleted}
        return not (uids & live)

    def _has_status_subresource(self, resource: Any) -> bool:
        return resource in self.resources and "status" in (self.resources[resource].subresources or ())

    async def _save(self, key: Any, body: dict[str, Any], event_type: str) -> None:
        self._rv += 1
        body["metadata"]["resourceVersion"] = str(self._rv)
        self._objects[key].history.append(body)
        await self._buses[key[0]].put({"type": event_type, "object": body})

    async def _delete(self, key: Any) -> None:
        """Finalizers -> deletionTimestamp; otherwise delete, then collect dependents (background GC)."""
        obj = self._objects[key].raw
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                await self._save(key, dicts.patch_dict(obj, {"metadata": {"deletionTimestamp": _now()}}), "MODIFIED")
            return
        self._rv += 1
        self._objects[key].delete()
        self.deletions.append((str(key[0]), key[1], key[2]))
        gone = dict(obj, metadata=dict(obj["metadata"], resourceVersion=str(self._rv)))
        await self._buses[key[0]].put({"type": "DELETED", "object": gone})
        uid = obj["metadata"]["uid"]
        for other_key, other in list(self._objects.items()):
            if other.deleted:
                continue
            refs = other.raw["metadata"].get("ownerReferences") or []
            if any(ref.get("uid") == uid for ref in refs):
                await self._delete(other_key)

    async def _serve_watch(self, request: Any) -> Any:
        # kopf lists, then watches from the list's resourceVersion: never replay older objects.
        rv = request.params.get("resourceVersion", "")
        since = int(rv) if rv.isdigit() else 0
        async for event in super()._serve_watch(request):
            if not isinstance(event, dict) or int(event["object"]["metadata"].get("resourceVersion", 0)) > since:
                yield event

    async def _serve_list(self, request: Any) -> Any:
        listing = await super()._serve_list(request)
        selector = request.params.get("labelSelector", "")
        items = [o for o in listing["items"] if _matches_selector(o, selector)] if selector else listing["items"]
        return dict(listing, items=items, metadata={"resourceVersion": str(self._rv)})


def crd_resources(group: str, version: str, kinds: Mapping[str, str]) -> dict[str, kmock.ResourceInfo]:
    """Custom resources as kmock declares them (kmock does not register kinds from applied CRDs)."""
    return {
        f"{group}/{version}/{plural}": kmock.ResourceInfo(
            kind=kind,
            singular=kind.lower(),
            namespaced=True,
            subresources={"status"},
            verbs={"get", "list", "watch", "create", "patch", "delete"},
        )
        for kind, plural in kinds.items()
    }


class Running:
    """An emulator served from a daemon thread with its own event loop."""

    def __init__(self, emulator: Emulator, url: str, stop: Callable[[], None]) -> None:
        self.emulator = emulator
        self.url = url
        self.stop = stop


def start_in_thread(resources: Mapping[str, Any], namespaces: tuple[str, ...] = ("default",)) -> Running:
    """Serve on 127.0.0.1:<random port> from a daemon thread -> Running(emulator, url, stop)."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        box["stop"] = asyncio.Event()
        async with Emulator() as emulator, kmock.Server(emulator) as server:
            emulator.resources.load_bundled()
            for resource, info in resources.items():
                emulator.resources[resource] = info
            box.update(emulator=emulator, url=str(server.url).rstrip("/"), loop=asyncio.get_running_loop())
            ready.set()
            await box["stop"].wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True, name="k8s-emulator")
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the Kubernetes emulator did not start within 10 s")
    for namespace in namespaces:  # kopf serves only namespaces that exist
        request = urllib.request.Request(
            box["url"] + "/api/v1/namespaces",
            method="POST",
            data=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=5).close()

    def stop() -> None:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(10)

    return Running(box["emulator"], box["url"], stop)
