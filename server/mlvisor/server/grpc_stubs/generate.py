"""Regenerate the committed gRPC stubs from the official Open Inference Protocol definition.

Command (from the repository root, with the test extras installed)::

    .venv/bin/python -m mlvisor.server.grpc_stubs.generate

Source: the ``open_inference_grpc.proto`` of the Open Inference Protocol working group
(package ``inference``, service ``GRPCInferenceService``: the KServe V2 ``grpc_predict_v2.proto``
with proto3 ``optional`` versions), as published on PyPI in ``open-inference-grpc==2.0.0``, which
carries the compiled FileDescriptorProto. That descriptor is read from the package's source text
(not imported: its module would register the same symbols in the default descriptor pool) and fed
to ``grpc_tools.protoc --descriptor_set_in``, renamed so that the generated modules import each
other as ``mlvisor.server.grpc_stubs.*``, and the descriptor is added to a descriptor pool of its
own instead of the process-wide default one: Triton's client (tritonclient.grpc) registers the
same ``inference.*`` names from its own proto file, and the default pool refuses a second file
defining them, so without this a process could not import both. ``tests/unit/test_grpc_service.py`` regenerates them and
fails when the committed files differ.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_NAME = "mlvisor/server/grpc_stubs/open_inference_grpc.proto"
OUTPUTS = ("open_inference_grpc_pb2.py", "open_inference_grpc_pb2.pyi", "open_inference_grpc_pb2_grpc.py")


def official_descriptor() -> bytes:
    """The serialized FileDescriptorProto inside open-inference-grpc's generated module."""
    spec = importlib.util.find_spec("open_inference")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("open-inference-grpc is not installed: pip install open-inference-grpc==2.0.0")
    source = Path(next(iter(spec.submodule_search_locations)), "grpc", "protocol.py").read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, bytes):
                return arg.value
    raise SystemExit("no serialized descriptor found in open_inference/grpc/protocol.py")


def generate(out_dir: Path) -> list[Path]:
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    fd = descriptor_pb2.FileDescriptorProto.FromString(official_descriptor())
    fd.name = PROTO_NAME
    fds = descriptor_pb2.FileDescriptorSet(file=[fd])
    with tempfile.TemporaryDirectory() as tmp:
        set_path = Path(tmp, "oip.pb")
        set_path.write_bytes(fds.SerializeToString())
        gen = Path(tmp, "gen")
        gen.mkdir()
        rc = protoc.main([
            "grpc_tools.protoc",
            f"--descriptor_set_in={set_path}",
            f"--python_out={gen}",
            f"--pyi_out={gen}",
            f"--grpc_python_out={gen}",
            PROTO_NAME,
        ])
        if rc != 0:
            raise SystemExit(f"protoc failed with exit code {rc}")
        produced = gen / Path(PROTO_NAME).parent
        written = []
        for name in OUTPUTS:
            text = (produced / name).read_text()
            if name.endswith("_pb2.py"):
                default_pool = "_descriptor_pool.Default().AddSerializedFile("
                if text.count(default_pool) != 1:
                    raise SystemExit(f"unexpected protoc output in {name}: no single {default_pool}")
                text = text.replace(default_pool, "_descriptor_pool.DescriptorPool().AddSerializedFile(")
            target = out_dir / name
            target.write_text(text)
            written.append(target)
    return written


def main() -> int:
    for path in generate(HERE):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
