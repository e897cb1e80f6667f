"""Regenerate service/grpc/proto's Python modules from its .proto (needs grpcio-tools, which
the dev extra installs): ``python -m service.grpc.generate``. The output is checked in, so
that an install needs no protoc; tests/grpc/test_generated.py checks it matches the .proto."""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).parent / "proto"
ROOT = PROTO_DIR.parents[2]


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


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
