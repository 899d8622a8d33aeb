"""The operator's API door (kube/client.py) against a real HTTP server of the test's (aiohttp.web).

TLS and the two logins (a kubeconfig's client certificates, the in-cluster token) are exercised
against the real API server by the cluster tier and bench/operator.py; here: what goes out, what
comes back, errors as ApiError with the server's status, message and Retry-After, and the bound
on requests in flight.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from mlvisor.operator.kube.client import ApiError, Kube, ListDecoder
from mlvisor.operator.kube.connection import Connection

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def configuration(port: int, token: str | None = "s3cret") -> Connection:
    header = f"Bearer {token}" if token is not None else None
    return Connection(host=f"http://127.0.0.1:{port}", authorization=lambda: header)


async def serve(handler: Handler) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


def test_a_request_sends_json_with_the_token_and_returns_the_decoded_answer() -> None:
    seen: list[dict[str, Any]] = []
    counted: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append({"method": request.method, "path": request.path, "query": dict(request.query),
                     "auth": request.headers.get("Authorization"), "type": request.headers.get("Content-Type"),
                     "body": orjson.loads(await request.read()) if request.can_read_body else None})
        return web.Response(body=orjson.dumps({"kind": "Pod", "metadata": {"name": "p"}}), content_type="application/json")

    async def main() -> list[Any]:
        runner, port = await serve(handler)
        kube = Kube(configuration(port), on_request=counted.append)
        try:
            created = await kube.create("/api/v1/namespaces/ml/pods", {"metadata": {"name": "p"}})
            patched = await kube.patch("/apis/mlvisor.dev/v1alpha1/namespaces/ml/trainingjobs/j/status", {"status": {"phase": "Running"}})
            listed = await kube.list("/api/v1/namespaces/ml/pods", label_selector="app=x")
            return [created, patched, listed]
        finally:
            await kube.close()
            await runner.cleanup()

    created, patched, listed = asyncio.run(main())
    assert created == patched == {"kind": "Pod", "metadata": {"name": "p"}}
    assert listed == []  # the answer has no items
    assert [(s["method"], s["path"]) for s in seen] == [
        ("POST", "/api/v1/namespaces/ml/pods"),
        ("PATCH", "/apis/mlvisor.dev/v1alpha1/namespaces/ml/trainingjobs/j/status"),
        ("GET", "/api/v1/namespaces/ml/pods"),
    ]
    assert all(s["auth"] == "Bearer s3cret" for s in seen)
    assert seen[0]["type"] == "application/json" and seen[0]["body"] == {"metadata": {"name": "p"}}
    assert seen[1]["type"] == "application/merge-patch+json" and seen[1]["body"] == {"status": {"phase": "Running"}}
    assert seen[2]["query"] == {"labelSelector": "app=x"} and seen[2]["body"] is None
    assert counted == ["POST", "PATCH", "LIST"]


def test_the_token_is_asked_for_on_every_request_so_a_refreshed_one_is_used() -> None:
    tokens = iter(["first", "second"])
    auth: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        auth.append(request.headers.get("Authorization"))
        return web.json_response({})

    async def main() -> None:
        runner, port = await serve(handler)
        # asked before every request, as the service account's TokenFile and exec plugins are
        kube = Kube(Connection(host=f"http://127.0.0.1:{port}", authorization=lambda: f"Bearer {next(tokens)}"))
        try:
            await kube.get("/api/v1/namespaces/ml/pods/a")
            await kube.get("/api/v1/namespaces/ml/pods/b")
        finally:
            await kube.close()
            await runner.cleanup()

    asyncio.run(main())
    assert auth == ["Bearer first", "Bearer second"]


@pytest.mark.parametrize(("status", "headers", "retry_after"), [
    (409, {}, None),
    (429, {"Retry-After": "3"}, 3.0),
    (404, {}, None),
])
def test_an_error_answer_is_an_api_error_with_the_servers_status_message_and_retry_after(
    status: int, headers: dict[str, str], retry_after: float | None
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"kind": "Status", "message": f"said {status}"}, status=status, headers=headers)

    async def main() -> ApiError:
        runner, port = await serve(handler)
        kube = Kube(configuration(port, token=None))
        try:
            with pytest.raises(ApiError) as caught:
                await kube.delete("/api/v1/namespaces/ml/pods/p")
            return caught.value
        finally:
            await kube.close()
            await runner.cleanup()

    error = asyncio.run(main())
    assert (error.status, error.message, error.retry_after) == (status, f"said {status}", retry_after)


def test_a_server_that_is_not_there_is_an_api_error_with_status_0() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there

    async def main() -> ApiError:
        kube = Kube(configuration(port))
        try:
            with pytest.raises(ApiError) as caught:
                await kube.get("/api/v1/namespaces/ml/pods/p")
            return caught.value
        finally:
            await kube.close()

    assert asyncio.run(main()).status == 0


def test_at_most_max_in_flight_requests_are_sent_at_once() -> None:
    now = 0
    most = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal now, most
        now += 1
        most = max(most, now)
        await asyncio.sleep(0.05)
        now -= 1
        return web.json_response({})

    async def main() -> None:
        runner, port = await serve(handler)
        kube = Kube(configuration(port), max_in_flight=3)
        try:
            await asyncio.gather(*(kube.create("/api/v1/namespaces/ml/pods", {"n": i}) for i in range(20)))
        finally:
            await kube.close()
            await runner.cleanup()

    asyncio.run(main())
    assert most == 3


LISTS = [
    # a built-in kind's list: metadata first; strings holding the structure's own characters; UTF-8
    b'{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"5","continue":"x"},'
    b'"items":[{"a":1,"s":"}],\\"{:"},{"b":[1,2.5,{"c":"\xc3\xa9"}],"n":null}]}',
    # a custom resource's list: keys sorted, so metadata after the items
    b'{"apiVersion":"mlvisor.dev/v1alpha1","items":[{"x":true}],"kind":"TrainingJobList","metadata":{"resourceVersion":"7"}}',
    # empty and null items, with whitespace anywhere
    b'{"apiVersion":"v1","items":[],"kind":"L","metadata":{"resourceVersion":"8"}}',
    b' { "items" : null ,\n "metadata" : { "resourceVersion" : "9" } } ',
]


@pytest.mark.parametrize("text", LISTS)
def test_a_list_is_decoded_an_item_at_a_time_whatever_pieces_it_comes_in(text: bytes) -> None:
    whole = orjson.loads(text)
    for size in (1, 2, 3, 5, 16, len(text)):
        decoder = ListDecoder()
        items = []
        for i in range(0, len(text), size):
            items += decoder.feed(text[i:i + size])
        items += decoder.feed(b"", final=True)
        assert items == (whole["items"] or []), size
        assert decoder.metadata == whole["metadata"]


def test_a_list_cut_short_or_not_a_list_is_an_error() -> None:
    decoder = ListDecoder()
    assert decoder.feed(LISTS[0][:140]) == [{"a": 1, "s": "}],\"{:"}]  # the second item is not complete yet
    with pytest.raises(ApiError, match="ended early"):
        decoder.feed(b"", final=True)
    with pytest.raises(ApiError, match="expected a JSON object"):
        ListDecoder().feed(b'[{"a": 1}]')


def test_list_items_streams_a_whole_answer_and_its_metadata() -> None:
    items = [{"metadata": {"name": f"p{i}"}, "pad": "x" * 5000} for i in range(50)]

    async def handler(request: web.Request) -> web.Response:
        body = {"apiVersion": "v1", "items": items, "kind": "PodList", "metadata": {"resourceVersion": "42"}}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def main() -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
        runner, port = await serve(handler)
        counted: list[str] = []
        kube = Kube(configuration(port), on_request=counted.append)
        metadata: dict[str, Any] = {}
        try:
            got = [item async for item in kube.list_items("/api/v1/pods", {"resourceVersion": "0"}, metadata)]
        finally:
            await kube.close()
            await runner.cleanup()
        return got, metadata, counted

    got, metadata, counted = asyncio.run(main())
    assert got == items and metadata == {"resourceVersion": "42"} and counted == ["LIST"]
