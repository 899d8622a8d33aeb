"""Generated V2 gRPC stubs (package ``inference``); regenerate with ``python -m mlvisor.server.grpc_stubs.generate``."""
