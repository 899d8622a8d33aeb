"""V2 gRPC: ``inference.GRPCInferenceService`` on grpc.aio, in the HTTP server's process and loop.

Same data plane, model, checks and batcher as REST: grpc_codec.py turns a ModelInfer request
into the InferRequest REST builds, the data plane serves it (joining the same batches as HTTP
callers), and the codec encodes the answer with ``raw_output_contents``. Errors carry the REST
message with the matching status code:
400 INVALID_ARGUMENT, 404 NOT_FOUND, 408 DEADLINE_EXCEEDED, 413 RESOURCE_EXHAUSTED,
503 UNAVAILABLE, 500 INTERNAL.

The stubs are generated from the official protocol definition (grpc_stubs/generate.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc

from mlvisor.server import grpc_codec
from mlvisor.server.dataplane import DataPlane
from mlvisor.server.errors import ApiError
from mlvisor.server.grpc_stubs import open_inference_grpc_pb2 as pb
from mlvisor.server.grpc_stubs import open_inference_grpc_pb2_grpc as pb_grpc

log = logging.getLogger("mlvisor.server")

STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}

class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, data_plane: DataPlane) -> None:
        self.data_plane = data_plane

    async def _abort(self, context: grpc.aio.ServicerContext, e: ApiError) -> None:
        if e.retry_after is not None:
            context.set_trailing_metadata((("retry-after", str(e.retry_after)),))
        await context.abort(STATUS_CODES.get(e.status, grpc.StatusCode.INTERNAL), e.message)

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=self.data_plane.live())

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.data_plane.ready())

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            ready = self.data_plane.model_ready(request.name, request.version or None)
        except ApiError as e:
            await self._abort(context, e)
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        meta = self.data_plane.server_metadata()
        return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"], extensions=meta["extensions"])

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            meta = self.data_plane.model_metadata(request.name, request.version or None)
        except ApiError as e:
            await self._abort(context, e)
        return grpc_codec.encode_model_metadata(meta)

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        t0 = time.perf_counter()
        status = 200
        try:
            response = await self.data_plane.infer(grpc_codec.decode_request(request, self.data_plane.settings.max_rows))
            return grpc_codec.encode_response(response, request.id)
        except ApiError as e:
            status = e.status
            await self._abort(context, e)
        except asyncio.CancelledError:  # the client's deadline passed or it went away
            status = 499
            raise
        except Exception as e:
            status = 500
            log.exception("gRPC inference failed")
            await self._abort(context, ApiError(500, f"internal server error: {type(e).__name__}: {e}"))
        finally:
            self.data_plane.metrics.observe_request("grpc_infer", status, time.perf_counter() - t0)
        raise AssertionError("unreachable")  # abort raises


async def start_grpc(data_plane: DataPlane, host: str, port: int) -> grpc.aio.Server:
    """Start the gRPC service on ``host:port`` in the running loop; raises if the port is taken."""
    limit = data_plane.settings.max_body_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", max(limit, 64 * 1024 * 1024)),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(data_plane), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as e:
        raise RuntimeError(f"cannot listen for gRPC on {address}: {e}") from e
    if bound == 0:
        raise RuntimeError(f"cannot listen for gRPC on {address}: the port is in use or the address is not available")
    await server.start()
    log.info("V2 gRPC (inference.GRPCInferenceService) listening on %s", address)
    return server
