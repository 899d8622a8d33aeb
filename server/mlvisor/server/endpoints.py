"""REST: the V2 (JSON and binary tensors) and KServe V1 endpoints over the data plane.

:class:`Endpoints` has one method per route; ``create_app`` (app.py) lists the routes.
Inference also has :class:`InferenceRoute`, a raw ASGI handler that ModelServerApp calls
before FastAPI for ``POST .../infer`` and ``:predict`` (FastAPI's middleware, routing and
dependency machinery were about a third of the CPU per request); it reads the body (bounded
in size and time, gzip/deflate decoded), splits binary tensor data off (binary.py), decodes
with the V2 JSON codec (v2_json.py) into an InferRequest, asks the data plane, and encodes the
answer. Every outcome is an answer ``{"error": "..."}``, never a raise: an exception reaching
uvicorn would close the keep-alive connection under the next request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections.abc import MutableMapping
from typing import Any

import orjson
from fastapi import Request
from starlette.responses import Response

from mlvisor.server import binary, v2_json
from mlvisor.server.dataplane import DataPlane
from mlvisor.server.errors import ApiError, bad_request

log = logging.getLogger("mlvisor.server")

JSON = "application/json"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_JSON_TYPE = (b"content-type", b"application/json")
RawHeaders = list[tuple[bytes, bytes]]


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj, option=_NUMPY), status_code=status, media_type=JSON)


def error_response(status: int, message: str, retry_after: int | None = None) -> Response:
    headers = {"retry-after": str(retry_after)} if retry_after is not None else None
    return Response(orjson.dumps({"error": message}), status_code=status, headers=headers, media_type=JSON)


def error_triplet(e: ApiError) -> tuple[int, RawHeaders, bytes]:
    """(status, headers, body) of an error answer for the raw route."""
    body = orjson.dumps({"error": e.message})
    headers = [_JSON_TYPE, (b"content-length", str(len(body)).encode())]
    if e.retry_after is not None:
        headers.append((b"retry-after", str(e.retry_after).encode()))
    return e.status, headers, body


# ---------------------------------------------------------------------------------- request bodies
class RequestHeaders:
    """The few request headers inference reads, from the raw ASGI list."""

    __slots__ = ("content_encoding", "content_length", "inference_header")

    def __init__(self, raw: RawHeaders) -> None:
        self.content_length: bytes | None = None
        self.inference_header: bytes | None = None
        self.content_encoding: bytes | None = None
        for k, v in raw:
            if k == b"content-length":
                self.content_length = v
            elif k == b"inference-header-content-length":
                self.inference_header = v
            elif k == b"content-encoding":
                self.content_encoding = v


async def read_body(receive: Any, headers: RequestHeaders, limit: int, timeout: float) -> bytes:
    """The body, refusing more than ``limit`` bytes (413) or a body that takes over ``timeout`` s (408)."""
    cl = headers.content_length
    if cl is not None:
        try:
            n = int(cl)
        except ValueError:
            raise bad_request(f"invalid Content-Length header {cl.decode('latin-1')!r}") from None
        if n > limit:
            raise ApiError(413, f"request body of {n} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    total = 0
    deadline: float | None = None
    while True:
        if deadline is None:
            message = await receive()  # usually the whole body, already buffered by the server
        else:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
            except TimeoutError:
                raise ApiError(408, f"the request body did not arrive within the request timeout of {timeout:g} s") from None
        if message["type"] == "http.disconnect":
            raise ApiError(400, "client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        if chunk:
            total += len(chunk)
            if total > limit:
                raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
        if deadline is None:
            deadline = time.monotonic() + timeout
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if headers.content_encoding is not None:
        body = decode_content(body, headers.content_encoding.decode("latin-1").strip().lower(), limit)
    return body


def decode_content(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip or deflate body, decompressed to at most ``limit`` bytes (a zip bomb gets 413)."""
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise ApiError(415, f"Content-Encoding {encoding!r} is not supported; send identity, gzip or deflate")
    d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise bad_request(f"the body is not valid {encoding} data: {e}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise ApiError(413, f"request body exceeds the limit of {limit} bytes once {encoding}-decoded")
    if not d.eof:
        raise bad_request(f"the {encoding} body is truncated")
    return out


def parse_json(body: bytes) -> Any:
    if not body:
        raise bad_request("empty request body; expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        error = e
    if b"NaN" in body or b"Infinity" in body:
        # The stdlib reads NaN/Infinity literals, which some clients send for missing values.
        # Its recursion guard is a RecursionError, which is the client's too-deep JSON, not ours.
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            pass
    hint = ""
    if b"binary_data_size" in body:
        hint = " (a body with binary tensor data needs the Inference-Header-Content-Length header)"
    raise bad_request(f"malformed JSON: {error}{hint}")


# ---------------------------------------------------------------------------------- inference
def infer_target(path: str) -> tuple[str, str | None, bool] | None:
    """(model name, version, is V1) for an inference path, None for any other path."""
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        middle = path[11:-6]
        name, sep, version = middle.partition("/versions/")
        if not name or "/" in name or (sep and (not version or "/" in version)):
            return None
        return name, (version if sep else None), False
    if path.startswith("/v1/models/") and path.endswith(":predict"):
        name = path[11:-8]
        if not name or "/" in name:
            return None
        return name, None, True
    return None


class InferenceRoute:
    """POST .../infer and :predict as a raw ASGI handler; every outcome is an answer, never a raise."""

    def __init__(self, data_plane: DataPlane) -> None:
        self.data_plane = data_plane
        self.settings = data_plane.settings
        self.metrics = data_plane.metrics
        self.timeout = data_plane.settings.request_timeout_seconds

    async def __call__(
        self, scope: MutableMapping[str, Any], receive: Any, send: Any, target: tuple[str, str | None, bool]
    ) -> None:
        t0 = time.perf_counter()
        status, headers, body = await self.respond(scope["headers"], receive, *target)
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        except Exception:  # the client went away; nothing left to answer
            log.debug("could not send the response", exc_info=True)
        self.metrics.observe_request("v1_predict" if target[2] else "infer", status, time.perf_counter() - t0)

    async def respond(
        self, raw_headers: RawHeaders, receive: Any, name: str, version: str | None, v1: bool
    ) -> tuple[int, RawHeaders, bytes]:
        dp = self.data_plane
        try:
            dp.require(name, version)
            dp.refuse_if_overloaded()
            headers = RequestHeaders(raw_headers)
            body = await read_body(receive, headers, self.settings.max_body_bytes, self.timeout)
            if v1:
                response = await dp.infer(v2_json.decode_v1(parse_json(body), name, self.settings.max_rows))
                out = v2_json.encode_v1(response)
                return 200, [_JSON_TYPE, (b"content-length", str(len(out)).encode())], out
            return await self._v2(headers, body, name, version)
        except ApiError as e:
            return error_triplet(e)
        except Exception as e:
            log.exception("inference failed")
            return error_triplet(ApiError(500, f"internal server error: {type(e).__name__}: {e}"))

    async def _v2(self, headers: RequestHeaders, body: bytes, name: str, version: str | None) -> tuple[int, RawHeaders, bytes]:
        if headers.inference_header is not None:
            head, blob = binary.split_body(body, headers.inference_header.decode("latin-1"))
            payload = parse_json(head)
            binary.attach_binary_inputs(payload, blob)
        else:
            payload = parse_json(body)
        request = v2_json.decode_infer(payload, name, version, self.settings.max_rows)
        binary.check_flags(request)
        response = await self.data_plane.infer(request)
        as_binary = binary.binary_outputs(request, response.outputs)
        out, header_length = binary.encode_response(v2_json.response_dict(response), as_binary)
        if header_length is None:
            return 200, [_JSON_TYPE, (b"content-length", str(len(out)).encode())], out
        return 200, [
            (b"content-type", binary.OCTET_STREAM),
            (b"inference-header-content-length", str(header_length).encode()),
            (b"content-length", str(len(out)).encode()),
        ], out


class Endpoints:
    """One method per REST route, over the data plane (MLServer's ``rest.endpoints.Endpoints``)."""

    def __init__(self, data_plane: DataPlane, inference: InferenceRoute) -> None:
        self.data_plane = data_plane
        self.inference = inference

    async def live(self) -> Response:
        return Response(b'{"live":true}', media_type=JSON)

    async def ready(self) -> Response:
        if not self.data_plane.ready():
            return error_response(503, self.data_plane.reason)
        return Response(b'{"ready":true}', media_type=JSON)

    async def server_metadata(self) -> Response:
        return json_response(self.data_plane.server_metadata())

    async def model_metadata(self, name: str) -> Response:
        return json_response(self.data_plane.model_metadata(name, None))

    async def model_version_metadata(self, name: str, version: str) -> Response:
        return json_response(self.data_plane.model_metadata(name, version))

    async def model_ready(self, name: str) -> Response:
        return self._model_ready(name, None)

    async def model_version_ready(self, name: str, version: str) -> Response:
        return self._model_ready(name, version)

    def _model_ready(self, name: str, version: str | None) -> Response:
        self.data_plane.require(name, version)  # 404, or 503 with the reason, as the V2 paths answer
        return json_response({"name": name, "ready": True})

    # Inference is served by the raw route in ModelServerApp.__call__; these are declared for the
    # OpenAPI document (and answer the same way should a request ever reach them).
    async def infer(self, request: Request, name: str) -> Response:
        return await self._infer(request, name, None, False)

    async def infer_version(self, request: Request, name: str, version: str) -> Response:
        return await self._infer(request, name, version, False)

    async def v1_predict(self, request: Request, name: str) -> Response:
        return await self._infer(request, name, None, True)

    async def _infer(self, request: Request, name: str, version: str | None, v1: bool) -> Response:
        status, headers, body = await self.inference.respond(request.scope["headers"], request.receive, name, version, v1)
        return Response(body, status, headers={k.decode(): v.decode() for k, v in headers if k != b"content-length"})

    async def metrics(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(self.data_plane.metrics.registry), media_type=CONTENT_TYPE_LATEST)
