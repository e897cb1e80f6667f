"""Regenerate service/grpc/proto's Python modules from its .proto (needs grpcio-tools, which
the dev extra installs): ``python -m service.grpc.generate``. The output is checked in, so
that an install needs no protoc; tests/grpc/test_generated.py checks it matches the .proto.

One line of protoc's output is changed: the messages are registered in a descriptor pool of
their own, not protobuf's default one. tritonclient.grpc registers the same protocol's
messages (``inference.ModelInferRequest``, ...) from its own copy of the .proto, and the
default pool refuses a second definition of a name: so a process (a test run, an
application embedding both) could not import the two. Message names never travel on the
wire; field numbers and the service's path do, and those are the protocol's.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).parent / "proto"
ROOT = PROTO_DIR.parents[2]
MODULE = PROTO_DIR / "inference_pb2.py"
DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
OWN_POOL = "_descriptor_pool.DescriptorPool().AddSerializedFile("


def generate(out: Path = ROOT) -> None:
    """Write inference_pb2.py and its stub (.pyi) under ``out``/service/grpc/proto."""
    from grpc_tools import protoc

    proto = PROTO_DIR / "inference.proto"
    # The path given relative to the checkout: the module is service.grpc.proto.inference_pb2,
    # and its file is registered as service/grpc/proto/inference.proto.
    status = protoc.main(
        [
            "protoc",
            f"-I{ROOT}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            str(proto),
        ]
    )
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    module = out / MODULE.relative_to(ROOT)
    text = module.read_text(encoding="utf-8")
    if text.count(DEFAULT_POOL) != 1:
        raise SystemExit(f"protoc's output no longer registers its file as expected: {module}")
    module.write_text(text.replace(DEFAULT_POOL, OWN_POOL), encoding="utf-8")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
