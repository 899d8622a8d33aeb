"""The mlvisor model server: one trainer artifact behind the Open Inference Protocol (V2), REST and gRPC.

Modules, each with one reason to exist:

- ``settings``: the flag/environment contract the operator and the local runtime start us with.
- ``errors``: the single error type whose body is always ``{"error": "..."}``.
- ``inference``: the typed, frozen InferRequest/InferResponse every protocol decodes into.
- ``v2_json``, ``binary``, ``grpc_codec``: the protocol codecs (V2 JSON and KServe V1, the
  binary tensor extension, V2 gRPC messages); ``tensors``: value checks per datatype.
- ``runtime``: the model: which inputs it takes (the matrix or named columns), prediction
  (the forest fast path), outputs and metadata.
- ``dataplane``: what the server does, whatever protocol asked (health, metadata, infer).
- ``batcher``: adaptive micro-batching of concurrent requests into one predict call off the loop.
- ``loading``: loading the artifact at start-up, and crashing when it never will.
- ``metrics``: Prometheus metrics, one registry per app.
- ``endpoints``: the REST handlers (and the raw inference route); ``app``: the route table,
  error handlers and lifespan; ``grpc_service``: the gRPC servicer.
- ``cli``: ``mlvisor serve`` / ``python -m mlvisor.server``.
"""
