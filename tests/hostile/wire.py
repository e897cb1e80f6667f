"""Raw HTTP/1.1 over sockets to 127.0.0.1, for what a well-behaved client cannot send, and the
server's memory as the kernel sees it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson

from harness.process import rss_bytes

HOST = "127.0.0.1"


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float  # from the first byte sent to the last byte read

    def json(self) -> Any:
        return orjson.loads(self.body)


def exchange(
    port: int,
    head: bytes,
    chunks: Iterable[bytes] = (),
    *,
    pause: float = 0.0,
    timeout: float = 30.0,
    half_close: bool = False,
) -> RawResponse:
    """Send ``head`` and then ``chunks`` (``pause`` seconds apart), and read one response.

    ``half_close`` shuts the sending side after the last chunk, as a client that gave up does.

    Sending stops at the first error: a server that answered early and closed the connection
    resets it, which is the point of several tests. The response is read until its
    Content-Length is complete or the server closes.
    """
    start = time.monotonic()
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        try:
            sock.sendall(head)
            for chunk in chunks:
                if pause:
                    time.sleep(pause)
                sock.sendall(chunk)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered and hung up; its answer is still in our buffer
        return _read_response(sock, start)


def http_request(
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    content_length: int | None = None,
    chunked: bool = False,
) -> bytes:
    """The request line and headers; Content-Length is whatever the caller claims."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_answer(sock: socket.socket) -> bytes:
    """The raw bytes of one JSON answer on a connection kept open: read until a head and a
    body ending in ``}`` have come, or the server closes."""
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        got = sock.recv(65536)
        if not got:
            break
        answer += got
    return answer


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _read_response(sock: socket.socket, start: float) -> RawResponse:
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            got = sock.recv(65536)
            if not got:
                break
            data += got
    except (ConnectionResetError, TimeoutError):
        pass
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        raise ConnectionError("the server closed the connection without answering")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "-1"))
    try:
        while length < 0 or len(body) < length:
            got = sock.recv(65536)
            if not got:
                break
            body += got
    except (ConnectionResetError, TimeoutError):
        pass
    return RawResponse(int(status_line.split()[1]), headers, body, time.monotonic() - start)


# -- memory of a server process ---------------------------------------------------------


@dataclass
class RssPeak:
    """The highest RSS seen while sampling (every few milliseconds) in a background thread."""

    pid: int
    peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self._stop.wait(0.005)


@contextmanager
def rss_peak(pid: int) -> Iterator[RssPeak]:
    watch = RssPeak(pid, rss_bytes(pid))
    thread = threading.Thread(target=watch.sample, daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        watch._stop.set()
        thread.join()
