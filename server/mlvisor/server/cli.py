"""``mlvisor serve`` and ``python -m mlvisor.server``: parse the flag/env contract, run uvicorn.

Heavy imports (FastAPI, sklearn, uvicorn) happen only inside ``serve`` so that ``mlvisor
--help`` stays instant. One uvicorn worker with uvloop and httptools; SIGTERM/SIGINT are
uvicorn's graceful shutdown (stop accepting, finish in-flight requests, then the lifespan
drains the batcher); a signal that arrives before the model is ready writes what the server
was doing as its termination message (``not ready: ...``). Exit codes: 128 + the signal
after a signal (uvicorn re-raises it: 143 for SIGTERM); 2 invalid settings; 4 the model can never be
loaded (reason in the termination message, see :mod:`mlvisor.server.loading`); 3 uvicorn could
not start (e.g. the port is taken). SIGUSR1 prints every thread's stack to stderr and changes
nothing else.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from mlvisor.server import settings as settings_module
from mlvisor.server.settings import ENV, SettingsError, resolve


def add_arguments(p: argparse.ArgumentParser) -> None:
    env = {k: v[0] for k, v in ENV.items()}
    d = settings_module
    p.add_argument("--model-dir", help=f"artifact version directory (env {env['model_dir']})")
    p.add_argument("--model-uri", help=f"artifact version in an object store (s3://) or on a web server (https://), "
                                       f"downloaded and verified first (env {env['model_uri']})")
    p.add_argument("--model-name", help=f"V2 model name; default metadata.name (env {env['model_name']})")
    p.add_argument("--host", help=f"bind address; default {d.DEFAULT_HOST} (env {env['host']})")
    p.add_argument("--port", type=int, help=f"HTTP port; default {d.DEFAULT_PORT} (env {env['port']})")
    p.add_argument("--grpc-port", type=int,
                   help=f"V2 gRPC port, 0 disables gRPC; default {d.DEFAULT_GRPC_PORT} (env {env['grpc_port']})")
    p.add_argument("--max-batch-size", type=int,
                   help=f"rows per merged predict call, 1 = no batching; default {d.DEFAULT_MAX_BATCH_SIZE} "
                        f"(env {env['max_batch_size']})")
    p.add_argument(
        "--max-latency-ms",
        type=float,
        help=f"longest wait for a batch to fill; default {d.DEFAULT_MAX_LATENCY_MS:g} (env {env['max_latency_ms']})",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        help=f"larger bodies get 413; default {d.DEFAULT_MAX_BODY_BYTES // 2**20} MiB (env {env['max_body_bytes']})",
    )
    p.add_argument(
        "--max-rows", type=int, help=f"rows allowed per request; default {d.DEFAULT_MAX_ROWS} (env {env['max_rows']})"
    )
    p.add_argument(
        "--max-queue",
        type=int,
        help=f"requests waiting for a predict call before 503 + Retry-After; default {d.DEFAULT_MAX_QUEUE} "
        f"(env {env['max_queue']})",
    )
    p.add_argument(
        "--request-timeout-seconds",
        type=float,
        help=f"longest a request may take (upload, queue, predict); default "
        f"{d.DEFAULT_REQUEST_TIMEOUT_SECONDS:g} (env {env['request_timeout_seconds']})",
    )
    p.add_argument(
        "--log-level",
        help=f"critical|error|warning|info|debug|trace; default {d.DEFAULT_LOG_LEVEL} (env {env['log_level']})",
    )


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve one model artifact over the V2 inference protocol")
    add_arguments(p)
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    flags = {k: getattr(args, k, None) for k in ENV}
    try:
        settings = resolve(flags)
    except SettingsError as e:
        print(f"mlvisor serve: {e}", file=sys.stderr)
        return 2
    import uvicorn

    from mlvisor.server.app import create_app

    level = settings.log_level.upper()
    # SIGUSR1 prints every thread's stack to stderr (the container log) and the server goes on:
    # the way to see where a server that stopped answering is stuck (kubectl exec ... kill -USR1 1).
    # faulthandler writes from the signal handler itself, so it works even when the event loop
    # or the GIL is blocked.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(
        level="DEBUG" if level == "TRACE" else level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from mlvisor.api.exits import EXIT_MODEL_UNLOADABLE

    exit_code = 0
    server: uvicorn.Server | None = None

    def crash(_message: str) -> None:
        # Let it crash: the message is already in the termination log; stop serving and exit.
        nonlocal exit_code
        exit_code = EXIT_MODEL_UNLOADABLE
        assert server is not None
        server.should_exit = True

    app = create_app(settings, on_fatal=crash)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level.lower(),
        access_log=level in ("DEBUG", "TRACE"),
        timeout_graceful_shutdown=30,
        # Longer than uvicorn's 5 s: on a saturated loop the idle timer of a keep-alive
        # connection could fire before its next request was read, and closing a socket with
        # unread data resets it (seen as "connection reset by peer" under overload).
        timeout_keep_alive=30,
        server_header=False,
        proxy_headers=False,  # no proxy sets X-Forwarded-* for a model server; skip the per-request work
    )
    state = app.state.mlvisor

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # A SIGTERM before the model is ready is the kubelet giving up on the startupProbe:
            # say why at once, before a SIGKILL after the grace period could cut the shutdown short.
            state.stopping()
            super().handle_exit(sig, frame)

    server = Server(config)
    server.run()
    if exit_code:
        return exit_code
    if not server.started:
        return 3  # what uvicorn.run exits with when start-up failed
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlvisor.server", description="Serve one mlvisor model artifact.")
    add_arguments(parser)
    return serve(parser.parse_args(argv))
