"""The mlvisor model server: one trainer artifact behind the Open Inference Protocol (V2) REST API.

Modules, each with one reason to exist:

- ``settings``: the flag/environment contract the operator and the local runtime start us with.
- ``errors``: the single error type whose body is always ``{"error": "..."}``.
- ``runtime``: the loaded model: request validation, prediction and response encoding.
- ``batcher``: adaptive micro-batching of concurrent requests into one predict call off the loop.
- ``metrics``: Prometheus metrics, one registry per app.
- ``app``: the FastAPI app factory (routes, readiness, error handlers, lifespan).
- ``cli``: ``mlvisor serve`` / ``python -m mlvisor.server``.
"""
