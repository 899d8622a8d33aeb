"""The server app: the REST routes as a table over the endpoints, the gRPC service, the lifespan.

``create_app(settings, data_plane=None, on_fatal=None)`` builds a ``ModelServerApp``: a
FastAPI app whose routes are listed in one table over an :class:`~mlvisor.server.endpoints.Endpoints`
object (MLServer's ``create_app(settings, data_plane, ...)``), with a raw ASGI inference route
in front (endpoints.InferenceRoute) and one guard that keeps exceptions away from uvicorn.
Both protocols serve one :class:`~mlvisor.server.dataplane.DataPlane`: REST here, V2 gRPC
(grpc_service.py) started by the lifespan on the same event loop and batcher.

The lifespan starts loading the artifact in a task and returns at once, so the server is
*live* while the model loads (see :mod:`mlvisor.server.loading`: a missing artifact is waited
for; one that can never load is final). On a final failure the data plane calls
``on_fatal(message)`` (the CLI ends the process with a distinct exit code); without it the app
stays live but not ready, with the reason in the readiness answer and the log.

Every error, including Starlette's own 404/405 and schema errors, answers ``{"error": "..."}``.
Bounds: body size (413, also after gzip/deflate decoding), rows per request (400), JSON nesting
(1024 levels, orjson's limit; tensor data at most as deep as its shape), time per request (408
while the body is still arriving, 503 with Retry-After once it waits for a prediction) and the
batcher's queue (503 with Retry-After when full).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute

from mlvisor.server.dataplane import DataPlane
from mlvisor.server.endpoints import JSON, Endpoints, InferenceRoute, error_response, error_triplet, infer_target
from mlvisor.server.errors import ApiError
from mlvisor.server.metrics import MetricsMiddleware
from mlvisor.server.settings import Settings

log = logging.getLogger("mlvisor.server")


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
            "examples": {
                "one tensor": {"value": {
                    "id": "42",
                    "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}],
                    "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
                }},
                "named columns": {"value": {
                    "inputs": [
                        {"name": "age", "shape": [2], "datatype": "FP64", "data": [39, None]},
                        {"name": "workclass", "shape": [2], "datatype": "BYTES", "data": ["Private", None]},
                    ],
                }},
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
    data_plane: DataPlane

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await FastAPI.__call__(self, scope, receive, send)
            return
        if scope["method"] == "POST":
            target = infer_target(scope["path"])
            if target is not None:
                await self.inference(scope, receive, send, target)
                return
        started = False

        async def tracking_send(message: MutableMapping[str, Any]) -> None:
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


def routes(endpoints: Endpoints) -> list[BaseRoute]:
    """Every REST route: path, handler, method, OpenAPI tags and documents."""
    infer = {"openapi_extra": {"requestBody": _INFER_BODY}, "responses": _INFER_RESPONSES, "tags": ["inference"]}
    v1 = {"openapi_extra": {"requestBody": _V1_BODY}, "responses": _INFER_RESPONSES, "tags": ["inference"]}
    table: list[tuple[str, Any, str, dict[str, Any]]] = [
        ("/v2/health/live", endpoints.live, "GET", {"tags": ["health"]}),
        ("/v2/health/ready", endpoints.ready, "GET", {"tags": ["health"]}),
        ("/v2", endpoints.server_metadata, "GET", {"tags": ["metadata"]}),
        ("/v2/models/{name}", endpoints.model_metadata, "GET", {"tags": ["metadata"]}),
        ("/v2/models/{name}/versions/{version}", endpoints.model_version_metadata, "GET", {"tags": ["metadata"]}),
        ("/v2/models/{name}/ready", endpoints.model_ready, "GET", {"tags": ["health"]}),
        ("/v2/models/{name}/versions/{version}/ready", endpoints.model_version_ready, "GET", {"tags": ["health"]}),
        ("/v2/models/{name}/infer", endpoints.infer, "POST", infer),
        ("/v2/models/{name}/versions/{version}/infer", endpoints.infer_version, "POST", infer),
        ("/v1/models/{name}:predict", endpoints.v1_predict, "POST", v1),
        ("/metrics", endpoints.metrics, "GET", {"tags": ["metrics"]}),
    ]
    return [APIRoute(path, handler, methods=[method], **options) for path, handler, method, options in table]


def create_app(
    settings: Settings, data_plane: DataPlane | None = None, on_fatal: Callable[[str], None] | None = None
) -> ModelServerApp:
    if data_plane is None:
        data_plane = DataPlane(settings, on_fatal=on_fatal)
    dp = data_plane
    inference = InferenceRoute(dp)
    endpoints = Endpoints(dp, inference)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        grpc_server = None
        if settings.grpc_port:
            from mlvisor.server.grpc_service import start_grpc

            grpc_server = await start_grpc(dp, settings.host, settings.grpc_port)
        loader = asyncio.create_task(dp.load(), name="mlvisor-load")
        try:
            yield
        finally:
            if not loader.done():
                loader.cancel()
            if grpc_server is not None:
                await grpc_server.stop(grace=5)
            await dp.stop()

    app = ModelServerApp(
        title="mlvisor model server",
        version=dp.server_version,
        description=(
            "Open Inference Protocol (V2) REST for one scikit-learn model, with the binary tensor data "
            "extension, plus KServe V1 predict. The same model answers V2 gRPC on the gRPC port. "
            "A model trained on a table takes one input per column, named as the column."
        ),
        routes=routes(endpoints),
        lifespan=lifespan,
    )
    app.state.mlvisor = dp
    app.data_plane = dp
    app.inference = inference
    app.add_middleware(MetricsMiddleware, metrics=dp.metrics)

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

    return app
