"""The FastAPI app: V2 REST routes, KServe V1 predict, health, metrics and docs.

``create_app(settings)`` builds an app whose lifespan starts loading the artifact in a thread
and returns at once, so the server is *live* while the model loads (see
:mod:`mlvisor.server.loading`: a missing artifact is waited for; one that can never load is
final). On a final failure the app calls ``on_fatal(message)`` (the CLI ends the process with
a distinct exit code); without it the app stays live but not ready, with the reason in the
readiness answer and the log. Bodies are read
and parsed with orjson by hand (no pydantic per request: faster, and every error is ours to
word), and every error, including Starlette's own 404/405, answers ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import version as _dist_version
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from mlvisor.server.batcher import Batcher
from mlvisor.server.loading import ModelUnloadable, load_model, report_unloadable
from mlvisor.server.errors import ApiError, bad_request
from mlvisor.server.metrics import MetricsMiddleware, ServerMetrics
from mlvisor.server.runtime import ModelRuntime, Parsed
from mlvisor.server.settings import Settings

log = logging.getLogger("mlvisor.server")

JSON = "application/json"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj, option=_NUMPY), status_code=status, media_type=JSON)


def error_response(status: int, message: str) -> Response:
    return Response(orjson.dumps({"error": message}), status_code=status, media_type=JSON)


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
            raise ApiError(503, self.reason)
        if version is not None and version != rt.version:
            raise ApiError(404, f"version {version!r} of model {name!r} not found; available: {rt.version!r}")
        return rt

    async def predict(self, p: Parsed) -> tuple[Any, Any]:
        assert self.batcher is not None
        try:
            return await self.batcher.submit(p.x, p.wants_labels, p.wants_proba, p.finite)
        except ValueError as e:  # sklearn's way of rejecting input that passed our checks
            raise bad_request(f"model rejected the input: {e}") from e
        except ApiError:
            raise
        except Exception as e:
            log.exception("prediction failed")
            raise ApiError(500, f"prediction failed: {type(e).__name__}: {e}") from e


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes from Content-Length or while streaming (413)."""
    cl = request.headers.get("content-length")
    if cl is not None:
        try:
            n = int(cl)
        except ValueError:
            raise bad_request(f"invalid Content-Length header {cl!r}") from None
        if n > limit:
            raise ApiError(413, f"request body of {n} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    total = 0
    receive = request.receive
    while True:
        message = await receive()
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
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_json(body: bytes) -> Any:
    if not body:
        raise bad_request("empty request body; expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        try:  # the stdlib accepts NaN/Infinity literals, which some clients send for missing values
            return json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise bad_request(f"malformed JSON: {e}") from None


_INFER_BODY = {
    "required": True,
    "content": {
        JSON: {
            "example": {
                "id": "42",
                "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}],
                "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
            }
        }
    },
}
_V1_BODY = {"required": True, "content": {JSON: {"example": {"instances": [[5.1, 3.5, 1.4, 0.2]]}}}}


def create_app(settings: Settings, on_fatal: Callable[[str], None] | None = None) -> FastAPI:
    metrics = ServerMetrics()
    state = ServerState(settings, metrics, on_fatal)
    server_version = _dist_version("mlvisor")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(state.load(), name="mlvisor-load")
        try:
            yield
        finally:
            if not loader.done():
                loader.cancel()
            if state.batcher is not None:
                await state.batcher.stop()

    app = FastAPI(
        title="mlvisor model server",
        version=server_version,
        description="Open Inference Protocol (V2) REST for one scikit-learn model, plus KServe V1 predict.",
        lifespan=lifespan,
    )
    app.state.mlvisor = state
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> Response:
        return error_response(e.status, e.message)

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
        return json_response({"name": "mlvisor", "version": server_version, "extensions": []})

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
    async def _infer(request: Request, name: str, version: str | None) -> Response:
        rt = state.require(name, version)
        if "inference-header-content-length" in request.headers:
            raise bad_request("binary tensor data is not supported; send JSON tensors (binary_data=False)")
        body = await read_body(request, settings.max_body_bytes)
        p = rt.parse_v2(parse_json(body), settings.max_rows)
        labels, proba = await state.predict(p)
        resp: dict[str, Any] = {"model_name": rt.name, "model_version": rt.version}
        if p.id is not None:
            resp["id"] = p.id
        resp["outputs"] = rt.v2_outputs(p.outputs, labels, proba)
        return Response(orjson.dumps(resp, option=_NUMPY), media_type=JSON)

    @app.post("/v2/models/{name}/infer", tags=["inference"], openapi_extra={"requestBody": _INFER_BODY})
    async def infer(request: Request, name: str) -> Response:
        return await _infer(request, name, None)

    @app.post(
        "/v2/models/{name}/versions/{version}/infer", tags=["inference"], openapi_extra={"requestBody": _INFER_BODY}
    )
    async def infer_version(request: Request, name: str, version: str) -> Response:
        return await _infer(request, name, version)

    @app.post("/v1/models/{name}:predict", tags=["inference"], openapi_extra={"requestBody": _V1_BODY})
    async def v1_predict(request: Request, name: str) -> Response:
        rt = state.require(name, None)
        body = await read_body(request, settings.max_body_bytes)
        p = rt.parse_v1(parse_json(body), settings.max_rows)
        labels, _ = await state.predict(p)
        return Response(orjson.dumps({"predictions": rt.label_data(labels)}, option=_NUMPY), media_type=JSON)

    # ------------------------------------------------------------------ metrics
    @app.get("/metrics", tags=["metrics"])
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
