"""The operator's list-then-watch (kube/informer.py) against a small API server of the test's (aiohttp.web).

The server keeps objects with increasing resourceVersions, answers a list whole (the informer
asks for one consistent list, never for pages), streams watch events from a resourceVersion, and
can be told to answer a watch 410 Gone or end it: what the real API server does, reduced to what
the informer relies on.
The cluster tier and bench/operator.py run the same informers against the real API server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web
from unit.operator.kube.test_client import configuration, serve

from mlvisor.operator.kube.client import Kube
from mlvisor.operator.kube.informer import Informer, Kind

PODS = Kind("Pod", "/api/v1", "pods", {"app": "mine"})


def pod(name: str, rv: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}", "resourceVersion": str(rv),
                         "labels": {"app": "mine"} if labels is None else labels}}


class FakeApi:
    def __init__(self) -> None:
        self.rv = 0
        self.objects: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.changed = asyncio.Condition()
        self.lists: list[dict[str, str]] = []
        self.watches: list[dict[str, str]] = []
        self.gone_below = 0
        """Watches from a resourceVersion below this are answered 410 (compacted)."""
        self.error_event = False
        """The next watch sends an ERROR event with code 410 instead of its events."""

    async def write(self, kind: str, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.rv)}}
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.objects.pop(name, None)
        else:
            self.objects[name] = obj
        self.events.append((self.rv, kind, obj))
        async with self.changed:
            self.changed.notify_all()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        if query.get("watch") == "true":
            return await self.watch(request, query)
        self.lists.append(query)
        meta: dict[str, Any] = {"resourceVersion": str(self.rv)}
        # the list's metadata after its items, as the API server writes custom resources' lists
        body = orjson.dumps({"apiVersion": "v1", "items": [self.objects[n] for n in sorted(self.objects)],
                             "kind": "PodList", "metadata": meta})
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for i in range(0, len(body), 7):  # in small pieces: items are decoded across them
            await response.write(body[i:i + 7])
        await response.write_eof()
        return response

    async def watch(self, request: web.Request, query: dict[str, str]) -> web.StreamResponse:
        self.watches.append(query)
        since = int(query["resourceVersion"])
        if since < self.gone_below:
            return web.json_response({"kind": "Status", "code": 410, "message": "too old"}, status=410)
        response = web.StreamResponse()
        await response.prepare(request)
        if self.error_event:
            self.error_event = False
            await response.write(orjson.dumps({"type": "ERROR", "object": {"code": 410, "reason": "Expired"}}) + b"\n")
            return response
        sent = since
        while True:
            for rv, kind, obj in self.events:
                if rv > sent:
                    await response.write(orjson.dumps({"type": kind, "object": obj}) + b"\n")
                    sent = rv
            async with self.changed:
                try:
                    await asyncio.wait_for(self.changed.wait(), timeout=float(query.get("timeoutSeconds", 5)))
                except TimeoutError:
                    return response


async def until(check: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.01)


def run(scenario: Any) -> Any:
    async def main() -> Any:
        api = FakeApi()
        runner, port = await serve(api.handle)
        kube = Kube(configuration(port))
        seen: list[tuple[str, str, str]] = []
        informer = Informer(kube, PODS, "ml", lambda t, b: seen.append((t, b["metadata"]["name"],
                                                                       b["metadata"].get("resourceVersion", ""))),
                            server_timeout=1, client_timeout=5)
        try:
            return await scenario(api, informer, seen)
        finally:
            await kube.close()
            await runner.cleanup()

    return asyncio.run(main())


SELECTED = {"labelSelector": "app=mine"}


def test_it_lists_the_newest_state_before_it_is_synced_then_watches_from_its_version() -> None:
    # No resourceVersion (a consistent read, which the API server answers from its watch cache
    # once that has caught up) and no limit (pages after the first come from etcd).
    lists = [SELECTED]

    async def scenario(api: FakeApi, informer: Informer, seen: list[Any]) -> None:
        for i in range(5):
            await api.write("ADDED", pod(f"p{i}", 0))
        task = asyncio.create_task(informer.run())
        await asyncio.wait_for(informer.synced.wait(), 5)
        assert [s[:2] for s in seen] == [("ADDED", f"p{i}") for i in range(5)]  # all before synced
        assert api.lists == lists
        await api.write("MODIFIED", pod("p1", 0))
        await until(lambda: len(seen) == 6)
        assert seen[-1] == ("MODIFIED", "p1", "6")
        assert api.watches[0]["resourceVersion"] == "5" and api.watches[0]["allowWatchBookmarks"] == "true"
        task.cancel()

    run(scenario)


def test_a_watch_the_server_ends_is_reopened_from_the_last_version_seen_and_nothing_is_repeated() -> None:
    async def scenario(api: FakeApi, informer: Informer, seen: list[Any]) -> None:
        await api.write("ADDED", pod("a", 0))
        task = asyncio.create_task(informer.run())
        await asyncio.wait_for(informer.synced.wait(), 5)
        await api.write("MODIFIED", pod("a", 0))
        await until(lambda: len(api.watches) >= 2)  # timeoutSeconds=1: the server ended the first
        await api.write("DELETED", pod("a", 0))
        await until(lambda: len(seen) == 3)
        assert seen == [("ADDED", "a", "1"), ("MODIFIED", "a", "2"), ("DELETED", "a", "3")]
        assert api.watches[1]["resourceVersion"] == "2" and len(api.lists) == 1
        task.cancel()

    run(scenario)


def test_a_410_lists_again_and_hands_over_what_vanished_meanwhile_as_deleted() -> None:
    async def scenario(api: FakeApi, informer: Informer, seen: list[Any]) -> None:
        await api.write("ADDED", pod("a", 0))
        await api.write("ADDED", pod("b", 0))
        task = asyncio.create_task(informer.run())
        await asyncio.wait_for(informer.synced.wait(), 5)
        await until(lambda: len(api.watches) == 1)
        # While nobody watches: b goes, c comes, and history before both is compacted.
        api.events.clear()
        api.rv += 1
        api.objects.pop("b")
        api.objects["c"] = pod("c", api.rv)
        api.objects["d"] = pod("d", api.rv)
        api.rv += 1
        api.gone_below = api.rv
        await until(lambda: len(api.lists) >= 2, timeout=8)  # the watch ended (1 s), 410, a new list
        await until(lambda: ("ADDED", "c", "3") in seen and any(s[:2] == ("DELETED", "b") for s in seen))
        assert ("MODIFIED", "a", "1") in seen  # still there: handed over again, as a modification
        # the list after the 410 asks for the newest state, as the first did
        assert api.lists[1] == SELECTED
        task.cancel()

    run(scenario)


def test_an_error_event_of_410_lists_again() -> None:
    async def scenario(api: FakeApi, informer: Informer, seen: list[Any]) -> None:
        await api.write("ADDED", pod("a", 0))
        api.error_event = True
        task = asyncio.create_task(informer.run())
        await until(lambda: len(api.lists) == 2)
        await api.write("MODIFIED", pod("a", 0))
        await until(lambda: seen[-1] == ("MODIFIED", "a", "2"))
        task.cancel()

    run(scenario)


def test_an_object_relabelled_out_of_the_selection_is_deleted_for_the_operator() -> None:
    async def scenario(api: FakeApi, informer: Informer, seen: list[Any]) -> None:
        await api.write("ADDED", pod("a", 0))
        await api.write("ADDED", pod("other", 0, labels={"app": "theirs"}))  # a server ignoring the selector
        task = asyncio.create_task(informer.run())
        await asyncio.wait_for(informer.synced.wait(), 5)
        assert [s[:2] for s in seen] == [("ADDED", "a")]
        await api.write("MODIFIED", pod("a", 0, labels={"app": "theirs"}))
        await until(lambda: len(seen) == 2)
        assert seen[-1][:2] == ("DELETED", "a")
        task.cancel()

    run(scenario)


def test_a_handler_that_raises_does_not_stop_the_stream() -> None:
    async def scenario(api: FakeApi, informer: Informer, seen: list[Any]) -> None:
        handed: list[str] = []

        def on_event(kind: str, body: dict[str, Any]) -> None:
            handed.append(body["metadata"]["name"])
            if body["metadata"]["name"] == "bad":
                raise ValueError("a body we cannot read")

        informer.on_event = on_event
        await api.write("ADDED", pod("bad", 0))
        await api.write("ADDED", pod("good", 0))
        task = asyncio.create_task(informer.run())
        await asyncio.wait_for(informer.synced.wait(), 5)
        await api.write("ADDED", pod("later", 0))
        await until(lambda: handed == ["bad", "good", "later"])
        task.cancel()

    run(scenario)


def test_a_watch_line_longer_than_64_kib_is_read_whole() -> None:
    async def scenario(api: FakeApi, informer: Informer, seen: list[Any]) -> None:
        task = asyncio.create_task(informer.run())
        await asyncio.wait_for(informer.synced.wait(), 5)
        big = pod("big", 0)
        big["metadata"]["annotations"] = {"x": "y" * 200_000}
        await api.write("ADDED", big)
        await until(lambda: len(seen) == 1)
        assert seen == [("ADDED", "big", "1")]
        task.cancel()

    run(scenario)
