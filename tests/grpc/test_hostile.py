"""What a well-behaved gRPC client cannot send, written as raw HTTP/2 frames on a socket:
garbage, a message larger than the body limit, and streams that stall mid-message. The
server stays up, answers tritonclient meanwhile, and its memory stays bounded."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import numpy as np
import tritonclient.grpc as triton

from tests.conftest import Server
from tests.grpc.conftest import LAYER, MAX_BODY_BYTES
from tests.hostile.wire import HOST, rss_peak

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS = 0, 1, 4
END_STREAM, END_HEADERS = 0x1, 0x4
MiB = 1024 * 1024


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def literal(name: str, value: str) -> bytes:
    """One HPACK header field, literal and not indexed (names and values under 127 bytes)."""
    return bytes([0, len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def call_head(port: int, stream: int) -> bytes:
    fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/inference.GRPCInferenceService/ModelInfer"),
        (":authority", f"{HOST}:{port}"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    block = b"".join(literal(name, value) for name, value in fields)
    return frame(HEADERS, END_HEADERS, stream, block)


def message_prefix(length: int) -> bytes:
    """gRPC's length prefix: not compressed, then the message's length."""
    return b"\x00" + struct.pack(">I", length)


@contextmanager
def connection(port: int) -> Iterator[socket.socket]:
    sock = socket.create_connection((HOST, port), timeout=10)
    try:
        yield sock
    finally:
        sock.close()


def drain(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection or stops for a second."""
    sock.settimeout(1.0)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return got


def still_serving(server: Server) -> None:
    with triton.InferenceServerClient(server.grpc_target) as client:
        x = np.ones((1, 4, 4, 2), dtype=np.float32)
        inp = triton.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(LAYER, [inp], parameters={"seed": 1})
        assert (result.as_numpy("output") == x).all()


def test_garbage_frames_close_the_connection_and_nothing_else(grpc_server: Server) -> None:
    garbage = [
        os.urandom(4096),  # not even the preface
        PREFACE + os.urandom(4096),  # the preface, then noise where frames should be
        PREFACE + frame(SETTINGS, 0, 0, b"") + frame(0xEE, 0xFF, 7, os.urandom(64)),
        PREFACE + frame(SETTINGS, 0, 0, b"") + frame(HEADERS, END_HEADERS, 1, os.urandom(200)),
        # a DATA frame on a stream that was never opened
        PREFACE + frame(SETTINGS, 0, 0, b"") + frame(DATA, END_STREAM, 3, b"\x00" * 16),
        # a valid call head, then a message that is not protobuf
        PREFACE
        + frame(SETTINGS, 0, 0, b"")
        + call_head(grpc_server.grpc_port, 1)
        + frame(DATA, END_STREAM, 1, message_prefix(8) + b"\xff" * 8),
    ]
    for data in garbage:
        with connection(grpc_server.grpc_port) as sock:
            sock.sendall(data)
            drain(sock)
        still_serving(grpc_server)


def test_an_oversized_message_is_refused_before_it_is_read(grpc_server: Server) -> None:
    """A prefix announcing 2 GiB - 1: the server refuses it without buffering toward it."""
    pid = grpc_server.process.pid  # type: ignore[union-attr]
    with rss_peak(pid) as watch:
        before = watch.peak
        with connection(grpc_server.grpc_port) as sock:
            sock.sendall(PREFACE + frame(SETTINGS, 0, 0, b"") + call_head(grpc_server.grpc_port, 1))
            sock.sendall(frame(DATA, 0, 1, message_prefix(2**31 - 1) + b"\x00" * 16000))
            answer = drain(sock)
        still_serving(grpc_server)
    assert answer  # the server answered (a status in trailers, or a reset), and did not hang
    assert watch.peak - before < 64 * MiB


def test_stalled_streams_hold_bounded_memory(grpc_server: Server) -> None:
    """Many streams each announce a message near the limit, send what flow control lets
    through (and more), then stall: the server keeps serving, its memory stays bounded."""
    pid = grpc_server.process.pid  # type: ignore[union-attr]
    announced = MAX_BODY_BYTES - 1024
    connections, streams = 8, 8
    with rss_peak(pid) as watch, ExitStack() as stack:
        before = watch.peak
        socks = [stack.enter_context(connection(grpc_server.grpc_port)) for _ in range(connections)]
        for sock in socks:
            sock.sendall(PREFACE + frame(SETTINGS, 0, 0, b""))
            for n in range(streams):
                stream = 2 * n + 1
                sock.sendall(call_head(grpc_server.grpc_port, stream))
                sock.sendall(frame(DATA, 0, stream, message_prefix(announced)))
            sock.setblocking(False)
            payload = b"\x00" * 16384
            # Past the windows the server granted: it must not buffer what it never allowed.
            for i in range(MAX_BODY_BYTES // len(payload)):
                try:
                    sock.send(frame(DATA, 0, 1 + 2 * (i % streams), payload))
                except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                    break
        still_serving(grpc_server)  # while every stream is stalled
        held = watch.peak - before
    # Unbounded buffering would hold up to 64 streams x 8 MiB; a window each is far less.
    print(f"\nFIGURE stalled gRPC streams held: {held / MiB:.1f} MiB")
    assert held < 128 * MiB, f"{held / MiB:.0f} MiB held by stalled streams"
    still_serving(grpc_server)
