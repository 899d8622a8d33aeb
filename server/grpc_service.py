"""V2 gRPC: ``inference.GRPCInferenceService`` on grpc.aio, in the HTTP server's process and loop.

Same model, same validation, same batcher as REST: a ModelInfer request is turned into the
request shape the runtime validates (inputs with numpy data decoded from ``raw_input_contents``
by binary.py's codec, or taken from the typed ``contents``), joins the same batches as HTTP
callers, and is answered with ``raw_output_contents``, which is what Triton sends and what
``tritonclient.grpc`` reads. Errors carry the REST message with the matching status code:
400 INVALID_ARGUMENT, 404 NOT_FOUND, 408 DEADLINE_EXCEEDED, 413 RESOURCE_EXHAUSTED,
503 UNAVAILABLE, 500 INTERNAL.

The stubs are generated from the official protocol definition (grpc_stubs/generate.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from mlvisor.server import binary
from mlvisor.server.errors import ApiError, bad_request
from mlvisor.server.grpc_stubs import open_inference_grpc_pb2 as pb
from mlvisor.server.grpc_stubs import open_inference_grpc_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from mlvisor.server.app import ServerState

log = logging.getLogger("mlvisor.server")

STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}

#: The typed ``InferTensorContents`` field for each datatype (FP16 has none: raw only).
CONTENTS_FIELD = {
    "BOOL": ("bool_contents", np.bool_),
    "UINT8": ("uint_contents", np.uint8),
    "UINT16": ("uint_contents", np.uint16),
    "UINT32": ("uint_contents", np.uint32),
    "UINT64": ("uint64_contents", np.uint64),
    "INT8": ("int_contents", np.int8),
    "INT16": ("int_contents", np.int16),
    "INT32": ("int_contents", np.int32),
    "INT64": ("int64_contents", np.int64),
    "FP32": ("fp32_contents", np.float32),
    "FP64": ("fp64_contents", np.float64),
}


def _parameter(p: Any) -> Any:
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind else None


def _contents(t: Any, what: str) -> Any:
    field = CONTENTS_FIELD.get(t.datatype)
    if field is None:
        if t.datatype == "BYTES":
            return [bytes(b) for b in t.contents.bytes_contents]
        if t.datatype == "FP16":
            raise bad_request(f"{what} is FP16, which has no typed contents field; send it in raw_input_contents")
        return []  # unknown datatype: the runtime names it
    name, dtype = field
    values = getattr(t.contents, name)
    for other in ("bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
                  "fp32_contents", "fp64_contents", "bytes_contents"):
        if other != name and len(getattr(t.contents, other)):
            raise bad_request(f"{what} is {t.datatype}: its values belong in contents.{name}, not contents.{other}")
    return np.asarray(values, dtype=dtype)


def request_payload(request: Any) -> dict[str, Any]:
    """The V2 request (as REST's JSON would parse) of a ModelInferRequest; data as numpy arrays."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise bad_request(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "when used, it must hold one entry per input, in order"
        )
    inputs = []
    for i, t in enumerate(request.inputs):
        what = f"input {t.name!r}"
        shape = list(t.shape)
        if raw:
            if t.HasField("contents"):
                raise bad_request(f"{what} has contents although raw_input_contents is used; send its values one way")
            data: Any = binary.decode_tensor(raw[i], t.datatype, shape, what) if t.datatype != "BYTES" else []
        else:
            data = _contents(t, what)
        inputs.append({"name": t.name, "shape": shape, "datatype": t.datatype, "data": data})
    payload: dict[str, Any] = {"inputs": inputs}
    if request.id:
        payload["id"] = request.id
    if request.outputs:
        payload["outputs"] = [{"name": o.name} for o in request.outputs]
    if request.parameters:
        payload["parameters"] = {k: _parameter(v) for k, v in request.parameters.items()}
    return payload


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def _abort(self, context: grpc.aio.ServicerContext, e: ApiError) -> None:
        if e.retry_after is not None:
            context.set_trailing_metadata((("retry-after", str(e.retry_after)),))
        await context.abort(STATUS_CODES.get(e.status, grpc.StatusCode.INTERNAL), e.message)

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.state.runtime is not None)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            self.state.require(request.name, request.version or None)
        except ApiError as e:
            if e.status == 503:
                return pb.ModelReadyResponse(ready=False)
            await self._abort(context, e)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        from mlvisor.server.app import EXTENSIONS

        return pb.ServerMetadataResponse(name="mlvisor", version=self.state.server_version, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            meta = self.state.require(request.name, request.version or None).v2_metadata()
        except ApiError as e:
            await self._abort(context, e)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        props = {k: v if isinstance(v, str) else str(v) for k, v in meta["parameters"].items()}
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["inputs"]],
            outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["outputs"]],
            properties=props,
        )

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        t0 = time.perf_counter()
        status = 200
        try:
            return await self._infer(request)
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
            self.state.metrics.observe_request("grpc_infer", status, time.perf_counter() - t0)
        raise AssertionError("unreachable")  # abort raises

    async def _infer(self, request: Any) -> Any:
        state = self.state
        rt = state.require(request.model_name, request.model_version or None)
        p = rt.parse_v2(request_payload(request), state.settings.max_rows)
        labels, proba = await state.predict(p)
        response = pb.ModelInferResponse(model_name=rt.name, model_version=rt.version, id=request.id)
        for out in rt.v2_outputs(p.outputs, labels, proba):
            response.outputs.add(name=out["name"], datatype=out["datatype"], shape=out["shape"])
            response.raw_output_contents.append(binary.tensor_bytes(out["datatype"], out["data"]))
        return response


async def start_grpc(state: ServerState, host: str, port: int) -> grpc.aio.Server:
    """Start the gRPC service on ``host:port`` in the running loop; raises if the port is taken."""
    limit = state.settings.max_body_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", max(limit, 64 * 1024 * 1024)),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(state), server)
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
