"""The server app: V2 REST (JSON and binary tensors), KServe V1 predict, health, metrics, docs.

``create_app(settings)`` builds a ``ModelServerApp`` whose lifespan starts loading the artifact
in a thread and returns at once, so the server is *live* while the model loads (see
:mod:`mlvisor.server.loading`: a missing artifact is waited for; one that can never load is
final). On a final failure the app calls ``on_fatal(message)`` (the CLI ends the process with a
distinct exit code); without it the app stays live but not ready, with the reason in the
readiness answer and the log. The lifespan also runs the V2 gRPC service (grpc_service.py) on
the same event loop and batcher.

Inference is a raw ASGI route in front of FastAPI: ``POST .../infer`` and ``:predict`` never go
through Starlette's middleware, routing and dependency machinery (profiled at about a third of
the CPU per request). FastAPI still serves health, metadata, metrics and the OpenAPI document,
which describes the infer routes too. Bodies are read and parsed with orjson by hand (no pydantic
per request: faster, and every error is ours to word), and every error, including Starlette's own
404/405, answers ``{"error": "..."}``. No exception ever reaches uvicorn: it would close the
keep-alive connection under the next request.

Bounds: body size (413, also after gzip/deflate decoding), rows per request (400), JSON nesting
(1024 levels, orjson's limit; tensor data at most as deep as its shape), time per request (408
while the body is still arriving, 503 with Retry-After once it waits for a prediction) and the
batcher's queue (503 with Retry-After when full).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import version as _dist_version
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from mlvisor.server import binary
from mlvisor.server.batcher import Batcher, Overloaded, RequestTimeout
from mlvisor.server.loading import ModelUnloadable, load_model, report_unloadable
from mlvisor.server.errors import ApiError, bad_request
from mlvisor.server.metrics import MetricsMiddleware, ServerMetrics
from mlvisor.server.runtime import ModelRuntime, Parsed
from mlvisor.server.settings import Settings

log = logging.getLogger("mlvisor.server")

#: What /v2 (and gRPC ServerMetadata) lists: Triton's name for the binary tensor extension.
EXTENSIONS = ("binary_tensor_data",)

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


class ServerState:
    """What the routes need: the runtime once loaded, or why it is not there."""

    def __init__(
        self, settings: Settings, metrics: ServerMetrics, on_fatal: Callable[[str], None] | None = None
    ) -> None:
        self.settings = settings
        self.on_fatal = on_fatal
        self.metrics = metrics
        self.runtime: ModelRuntime | None = None
        self.batcher: Batcher | None = None
        self.model_name: str | None = settings.model_name
        self.reason = "model is loading"
        self.server_version = ""

    async def load(self) -> None:
        s = self.settings

        def waiting(reason: str) -> None:
            self.reason = f"model not loaded: {reason}"

        def named(name: str) -> None:
            self.model_name = name

        try:
            runtime, seconds = await load_model(s.model_dir, self.model_name, waiting, named)
        except ModelUnloadable as e:
            self.reason = f"model not loaded: {e}"
            if self.on_fatal is not None:
                self.on_fatal(report_unloadable(s.model_dir, str(e)))
                return
            log.error("%s (model dir %s); the server stays live but not ready", self.reason, s.model_dir)
            return
        batcher = Batcher(
            runtime.predict,
            s.max_batch_size,
            s.max_latency_ms,
            on_batch=self.metrics.observe_batch,
            on_queue=self.metrics.queue_depth.set,
            max_queue=s.max_queue,
            timeout=s.request_timeout_seconds,
        )
        # Everything alive now (FastAPI, sklearn, numpy, the model: ~150k objects) lives for
        # the whole process. Freezing it keeps the cyclic GC from walking it again: without
        # this a full collection pauses every in-flight request for 40+ ms (p99 under load).
        gc.collect()
        gc.freeze()
        batcher.start()
        self.batcher = batcher
        self.runtime = runtime
        self.metrics.load_seconds.set(seconds)
        self.metrics.model_ready.set(1)
        log.info(
            "model %r version %s (%s, %d features) loaded and warmed up in %.3f s; ready",
            runtime.name, runtime.version, runtime.estimator_name, runtime.n_features, seconds,
        )

    def require(self, name: str, version: str | None) -> ModelRuntime:
        """The runtime for /v2/models/{name}[/versions/{version}]: 404 if unknown, 503 if not ready."""
        if self.model_name is not None and name != self.model_name:
            raise ApiError(404, f"model {name!r} not found; this server serves {self.model_name!r}")
        rt = self.runtime
        if rt is None:
            raise ApiError(503, self.reason, retry_after=1)
        if version is not None and version != rt.version:
            raise ApiError(404, f"version {version!r} of model {name!r} not found; available: {rt.version!r}")
        return rt

    async def predict(self, p: Parsed) -> tuple[Any, Any]:
        """(labels, proba) of a validated request, through the batcher; errors as ApiError."""
        assert self.batcher is not None
        try:
            future = self.batcher.submit(p.x, p.wants_labels, p.wants_proba, p.finite)
        except Overloaded as e:
            raise ApiError(503, f"{e}; retry later", retry_after=1) from None
        try:
            return await future
        except RequestTimeout:
            t = f"{self.settings.request_timeout_seconds:g}"
            raise ApiError(503, f"the prediction did not finish within the request timeout of {t} s; retry later",
                           retry_after=1) from None
        except ValueError as e:  # sklearn's way of rejecting input that passed our checks
            raise bad_request(f"model rejected the input: {e}") from e
        except ApiError:
            raise
        except Exception as e:
            log.exception("prediction failed")
            raise ApiError(500, f"prediction failed: {type(e).__name__}: {e}") from e


# ---------------------------------------------------------------------------------- request bodies
class RequestHeaders:
    """The few request headers inference reads, from the raw ASGI list."""

    __slots__ = ("content_length", "inference_header", "content_encoding")

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

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.settings = state.settings
        self.metrics = state.metrics
        self.timeout = state.settings.request_timeout_seconds

    async def __call__(self, scope: dict, receive: Any, send: Any, target: tuple[str, str | None, bool]) -> None:
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
        try:
            rt = self.state.require(name, version)
            batcher = self.state.batcher
            if batcher is not None and batcher.full():
                # Refuse before reading or parsing: under overload, shedding must cost less than
                # serving, or the backlog moves into the sockets and latency grows without bound.
                raise ApiError(503, f"the server is overloaded: {batcher.max_queue} requests are already waiting "
                               "for a prediction; retry later", retry_after=1)
            headers = RequestHeaders(raw_headers)
            body = await read_body(receive, headers, self.settings.max_body_bytes, self.timeout)
            if v1:
                p = rt.parse_v1(parse_json(body), self.settings.max_rows)
                labels, _ = await self.state.predict(p)
                out = orjson.dumps({"predictions": rt.label_data(labels)}, option=_NUMPY)
                return 200, [_JSON_TYPE, (b"content-length", str(len(out)).encode())], out
            return await self._v2(rt, headers, body)
        except ApiError as e:
            return error_triplet(e)
        except Exception as e:
            log.exception("inference failed")
            return error_triplet(ApiError(500, f"internal server error: {type(e).__name__}: {e}"))

    async def _v2(self, rt: ModelRuntime, headers: RequestHeaders, body: bytes) -> tuple[int, RawHeaders, bytes]:
        if headers.inference_header is not None:
            head, blob = binary.split_body(body, headers.inference_header.decode("latin-1"))
            payload = parse_json(head)
            binary.attach_binary_inputs(payload, blob)
        else:
            payload = parse_json(body)
        p = rt.parse_v2(payload, self.settings.max_rows)
        as_binary = binary.binary_outputs(payload, p.outputs)
        labels, proba = await self.state.predict(p)
        resp: dict[str, Any] = {"model_name": rt.name, "model_version": rt.version}
        if p.id is not None:
            resp["id"] = p.id
        resp["outputs"] = rt.v2_outputs(p.outputs, labels, proba)
        out, header_length = binary.encode_response(resp, as_binary)
        if header_length is None:
            return 200, [_JSON_TYPE, (b"content-length", str(len(out)).encode())], out
        return 200, [
            (b"content-type", binary.OCTET_STREAM),
            (b"inference-header-content-length", str(header_length).encode()),
            (b"content-length", str(len(out)).encode()),
        ], out


_INFER_BODY = {
    "required": True,
    "content": {
        JSON: {
            "schema": {
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "id": {"type": "string"},
                    "parameters": {"type": "object"},
                    "inputs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "shape", "datatype", "data"],
                            "properties": {
                                "name": {"type": "string"},
                                "shape": {"type": "array", "items": {"type": "integer"}},
                                "datatype": {
                                    "type": "string",
                                    "enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16",
                                             "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"],
                                },
                                "parameters": {"type": "object"},
                                "data": {"type": "array"},
                            },
                        },
                    },
                    "outputs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                        },
                    },
                },
            },
            "example": {
                "id": "42",
                "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}],
                "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
            },
        }
    },
}
_V1_BODY = {
    "required": True,
    "content": {
        JSON: {
            "schema": {
                "type": "object",
                "required": ["instances"],
                "properties": {"instances": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}},
            },
            "example": {"instances": [[5.1, 3.5, 1.4, 0.2]]},
        }
    },
}
_ERROR = {"description": "error", "content": {JSON: {"schema": {
    "type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}}}}
_INFER_RESPONSES = {str(code): _ERROR for code in (400, 404, 408, 413, 415, 500, 503)}


class ModelServerApp(FastAPI):
    """FastAPI behind a raw inference route, and a guard that keeps exceptions away from uvicorn."""

    inference: InferenceRoute

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await FastAPI.__call__(self, scope, receive, send)
            return
        if scope["method"] == "POST":
            target = infer_target(scope["path"])
            if target is not None:
                await self.inference(scope, receive, send, target)
                return
        started = False

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await FastAPI.__call__(self, scope, receive, tracking_send)
        except Exception as e:
            # Starlette re-raises after our handler answered 500; uvicorn would then close the
            # connection. The answer went out (or goes out now): keep the connection.
            if not started:
                log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
                _, headers, body = error_triplet(ApiError(500, f"internal server error: {type(e).__name__}: {e}"))
                await send({"type": "http.response.start", "status": 500, "headers": headers})
                await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings, on_fatal: Callable[[str], None] | None = None) -> ModelServerApp:
    metrics = ServerMetrics()
    state = ServerState(settings, metrics, on_fatal)
    server_version = _dist_version("mlvisor")
    state.server_version = server_version

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        grpc_server = None
        if settings.grpc_port:
            from mlvisor.server.grpc_service import start_grpc

            grpc_server = await start_grpc(state, settings.host, settings.grpc_port)
        loader = asyncio.create_task(state.load(), name="mlvisor-load")
        try:
            yield
        finally:
            if not loader.done():
                loader.cancel()
            if grpc_server is not None:
                await grpc_server.stop(grace=5)
            if state.batcher is not None:
                await state.batcher.stop()

    app = ModelServerApp(
        title="mlvisor model server",
        version=server_version,
        description=(
            "Open Inference Protocol (V2) REST for one scikit-learn model, with the binary tensor data "
            "extension, plus KServe V1 predict. The same model answers V2 gRPC on the gRPC port."
        ),
        lifespan=lifespan,
    )
    app.state.mlvisor = state
    app.inference = InferenceRoute(state)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> Response:
        return error_response(e.status, e.message, e.retry_after)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> Response:
        if e.status_code == 404:
            msg = f"no such endpoint: {request.method} {request.url.path}"
        elif e.status_code == 405:
            msg = f"method {request.method} not allowed for {request.url.path}"
        else:
            msg = str(e.detail)
        return Response(orjson.dumps({"error": msg}), e.status_code, headers=e.headers, media_type=JSON)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> Response:
        parts = ["/".join(str(p) for p in err.get("loc", ())) + ": " + str(err.get("msg")) for err in e.errors()]
        return error_response(400, "invalid request: " + "; ".join(parts))

    @app.exception_handler(Exception)
    async def _fault(request: Request, e: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal server error: {type(e).__name__}: {e}")

    # ------------------------------------------------------------------ health and metadata
    @app.get("/v2/health/live", tags=["health"])
    async def live() -> Response:
        return Response(b'{"live":true}', media_type=JSON)

    @app.get("/v2/health/ready", tags=["health"])
    async def ready() -> Response:
        if state.runtime is None:
            return error_response(503, state.reason)
        return Response(b'{"ready":true}', media_type=JSON)

    @app.get("/v2", tags=["metadata"])
    async def server_metadata() -> Response:
        return json_response({"name": "mlvisor", "version": server_version, "extensions": list(EXTENSIONS)})

    async def _model_metadata(name: str, version: str | None) -> Response:
        return json_response(state.require(name, version).v2_metadata())

    async def _model_ready(name: str, version: str | None) -> Response:
        state.require(name, version)
        return json_response({"name": name, "ready": True})

    @app.get("/v2/models/{name}", tags=["metadata"])
    async def model_metadata(name: str) -> Response:
        return await _model_metadata(name, None)

    @app.get("/v2/models/{name}/versions/{version}", tags=["metadata"])
    async def model_version_metadata(name: str, version: str) -> Response:
        return await _model_metadata(name, version)

    @app.get("/v2/models/{name}/ready", tags=["health"])
    async def model_ready(name: str) -> Response:
        return await _model_ready(name, None)

    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["health"])
    async def model_version_ready(name: str, version: str) -> Response:
        return await _model_ready(name, version)

    # ------------------------------------------------------------------ inference
    # Served by the raw route in ModelServerApp.__call__; declared here for the OpenAPI document
    # (and answered the same way should a request ever reach them).
    async def _infer(request: Request, name: str, version: str | None, v1: bool = False) -> Response:
        status, headers, body = await app.inference.respond(request.scope["headers"], request.receive, name, version, v1)
        return Response(body, status, headers={k.decode(): v.decode() for k, v in headers if k != b"content-length"})

    extra = {"requestBody": _INFER_BODY}

    @app.post("/v2/models/{name}/infer", tags=["inference"], openapi_extra=extra, responses=_INFER_RESPONSES)
    async def infer(request: Request, name: str) -> Response:
        return await _infer(request, name, None)

    @app.post(
        "/v2/models/{name}/versions/{version}/infer", tags=["inference"], openapi_extra=extra, responses=_INFER_RESPONSES
    )
    async def infer_version(request: Request, name: str, version: str) -> Response:
        return await _infer(request, name, version)

    @app.post(
        "/v1/models/{name}:predict", tags=["inference"], openapi_extra={"requestBody": _V1_BODY}, responses=_INFER_RESPONSES
    )
    async def v1_predict(request: Request, name: str) -> Response:
        return await _infer(request, name, None, True)

    # ------------------------------------------------------------------ metrics
    @app.get("/metrics", tags=["metrics"])
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
