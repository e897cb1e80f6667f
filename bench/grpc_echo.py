"""The gRPC limit for a call of N bytes: a grpc.aio server whose ModelInfer answers each
request's bytes as they came (no parsing, no work), with the service's message bounds lifted.
What the service's gRPC path costs beyond it is the service's own.

    python -m bench.grpc_echo --port 9001
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc

from bench.scenarios.grpc import INFER

SERVICE, METHOD = INFER.strip("/").split("/")


async def echo(data: bytes, _context: Any) -> bytes:
    return data


async def serve(host: str, port: int) -> None:
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    server = grpc.aio.server(options=options)
    handler = grpc.unary_unary_rpc_method_handler(echo)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),)
    )
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
