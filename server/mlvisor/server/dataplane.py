"""The data plane: what the server does, whatever protocol asked (KServe's ``DataPlane``).

One object holds the model once loaded (or why it is not), the batcher and the metrics, and
answers typed questions: is the server live or ready, the server's and a model's metadata,
whether a model is ready, and :meth:`DataPlane.infer` of an
:class:`~mlvisor.server.inference.InferRequest`. REST (endpoints.py, app.py) and gRPC
(grpc_service.py) are thin protocol layers over it and never know about each other. Every
failure is an :class:`~mlvisor.server.errors.ApiError` with the HTTP status it deserves; gRPC
maps the status to its codes.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from importlib.metadata import version as _dist_version
from typing import Any

from mlvisor.server.batcher import Batcher, Overloaded, RequestTimeout
from mlvisor.server.errors import ApiError, bad_request
from mlvisor.server.inference import InferRequest, InferResponse
from mlvisor.server.loading import RETRY_SECONDS, ModelUnloadable, load_model, report_not_ready, report_unloadable
from mlvisor.server.metrics import ServerMetrics
from mlvisor.server.runtime import ModelRuntime
from mlvisor.server.settings import Settings

log = logging.getLogger("mlvisor.server")

SERVER_NAME = "mlvisor"
#: What /v2 (and gRPC ServerMetadata) lists: Triton's name for the binary tensor extension.
EXTENSIONS = ("binary_tensor_data",)


class DataPlane:
    """The model once loaded, or why it is not there; inference through the batcher."""

    def __init__(
        self,
        settings: Settings,
        metrics: ServerMetrics | None = None,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_fatal = on_fatal
        self.metrics = metrics if metrics is not None else ServerMetrics()
        self.runtime: ModelRuntime | None = None
        self.batcher: Batcher | None = None
        self.model_name: str | None = settings.model_name
        self.reason = "model is loading"
        self.doing = f"loading the model from {settings.model_uri or settings.model_dir}"
        """What it does while not ready, in words that follow 'it was' (for the termination message)."""
        self.fatal = False
        self.server_version = _dist_version("mlvisor")

    # ------------------------------------------------------------------ lifecycle
    async def load(self) -> None:
        s = self.settings

        def waiting(reason: str) -> None:
            self.reason = f"model not loaded: {reason}; retrying every {RETRY_SECONDS:g}s"
            self.doing = reason

        def named(name: str) -> None:
            self.model_name = name

        try:
            runtime, seconds = await load_model(s.model_dir, self.model_name, waiting, named, uri=s.model_uri)
        except ModelUnloadable as e:
            self.reason = f"model not loaded: {e}"
            self.fatal = True
            if self.on_fatal is not None:
                self.on_fatal(report_unloadable(s.model_uri or s.model_dir, str(e)))
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

    def stopping(self) -> None:
        """Told to stop (the CLI calls it on SIGTERM/SIGINT): before the model is ready, say what
        it was doing in the termination message (after a final load failure that message is
        already written)."""
        if self.runtime is None and not self.fatal:
            report_not_ready(self.doing)

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()

    # ------------------------------------------------------------------ health and metadata
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.runtime is not None

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": self.server_version, "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        return self.require(name, version).v2_metadata()

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """True when ready; False while loading (or when it never will); 404 for another model or version."""
        try:
            self.require(name, version)
        except ApiError as e:
            if e.status == 503:
                return False
            raise
        return True

    def require(self, name: str, version: str | None) -> ModelRuntime:
        """The runtime for a model name and version: 404 if unknown, 503 if not ready."""
        if self.model_name is not None and name != self.model_name:
            raise ApiError(404, f"model {name!r} not found; this server serves {self.model_name!r}")
        rt = self.runtime
        if rt is None:
            raise ApiError(503, self.reason, retry_after=1)
        if version is not None and version != rt.version:
            raise ApiError(404, f"version {version!r} of model {name!r} not found; available: {rt.version!r}")
        return rt

    # ------------------------------------------------------------------ inference
    def refuse_if_overloaded(self) -> None:
        """503 before reading or parsing anything when the queue is full.

        Under overload, shedding must cost less than serving, or the backlog moves into the
        sockets and latency grows without bound.
        """
        batcher = self.batcher
        if batcher is not None and batcher.full():
            raise ApiError(503, f"the server is overloaded: {batcher.max_queue} requests are already waiting "
                           "for a prediction; retry later", retry_after=1)

    async def infer(self, request: InferRequest) -> InferResponse:
        """Check the request against the model, predict (batched with other callers), answer; errors as ApiError."""
        rt = self.require(request.model_name, request.model_version)
        p = rt.prepare(request, self.settings.max_rows)
        assert self.batcher is not None
        try:
            future = self.batcher.submit(p.x, p.wants_labels, p.wants_proba, p.finite, p.rows)
        except Overloaded as e:
            raise ApiError(503, f"{e}; retry later", retry_after=1) from None
        try:
            labels, proba = await future
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
        return rt.response(request, p.outputs, labels, proba)
