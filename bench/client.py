"""Clients that cost as little as possible, so the server side dominates what is measured.

``HttpConn`` speaks just enough HTTP/1.1 over one keep-alive socket: it sends the head and the
body (a memoryview, never concatenated) with ``sendall``, and reads the answer's body with
``recv_into`` straight into a buffer it keeps between requests. ``EchoConn`` does the same for
the length-prefixed TCP echo (bench.tcp_echo), so both sides of a ratio pay the same client
costs.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from bench.tcp_echo import PREFIX

_HEAD_END = b"\r\n\r\n"


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: memoryview
    seconds: float  # first byte sent to last byte received


class HttpConn:
    #: uvicorn closes a keep-alive connection idle for 5 s: one idle longer than this is
    #: replaced before the next request (untimed), rather than found closed mid-send.
    MAX_IDLE = 2.0

    def __init__(self, host: str, port: int, timeout: float = 600.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._buffer = bytearray(1 << 16)
        self._chunk = bytearray(1 << 16)
        self._connect()

    def _connect(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._used = time.monotonic()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> HttpConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        target: str,
        body: bytes | memoryview = b"",
        headers: dict[str, str] | None = None,
    ) -> HttpAnswer:
        """One request; the answer's body is a view of a buffer the next request reuses."""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if time.monotonic() - self._used > self.MAX_IDLE:
            self.sock.close()
            self._connect()
        sock = self.sock
        start = time.perf_counter()
        sock.sendall(head)
        if len(body):
            sock.sendall(body)
        status, answer_headers, extra = self._read_head()
        length = int(answer_headers.get("content-length", "-1"))
        if length < 0:
            raise RuntimeError(f"no Content-Length in the answer: {answer_headers}")
        if len(self._buffer) < length:
            self._buffer = bytearray(length)
        view = memoryview(self._buffer)[:length]
        got = min(len(extra), length)
        view[:got] = extra[:got]
        while got < length:
            n = sock.recv_into(view[got:])
            if n == 0:
                raise ConnectionError("the server closed the connection mid-answer")
            got += n
        seconds = time.perf_counter() - start
        self._used = time.monotonic()
        if answer_headers.get("connection", "").lower() == "close":
            self._used = -1e9  # reconnect next time
        return HttpAnswer(status, answer_headers, view, seconds)

    def _read_head(self) -> tuple[int, dict[str, str], bytes]:
        data = b""
        chunk = memoryview(self._chunk)
        while True:
            n = self.sock.recv_into(chunk)
            if n == 0:
                raise ConnectionError("the server closed the connection")
            data += chunk[:n]
            end = data.find(_HEAD_END)
            if end >= 0:
                break
        head, extra = data[:end].decode("latin-1"), data[end + len(_HEAD_END) :]
        status_line, *header_lines = head.split("\r\n")
        headers = {}
        for line in header_lines:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers, extra


class EchoConn:
    """A client of bench.tcp_echo: time to send a payload and receive it back whole."""

    def __init__(self, host: str, port: int, timeout: float = 600.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = bytearray(0)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> EchoConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def echo(self, payload: bytes | memoryview) -> tuple[memoryview, float]:
        size = len(payload)
        if len(self._buffer) < size:
            self._buffer = bytearray(size)
        view = memoryview(self._buffer)[:size]
        sock = self.sock
        start = time.perf_counter()
        sock.sendall(size.to_bytes(PREFIX, "big"))
        sock.sendall(payload)
        got = 0
        while got < size:
            n = sock.recv_into(view[got:])
            if n == 0:
                raise ConnectionError("the echo server closed the connection")
            got += n
        return view, time.perf_counter() - start
