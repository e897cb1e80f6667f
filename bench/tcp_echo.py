"""The loopback limit for a request/response of N bytes: a length-prefixed TCP echo.

A message is an 8-byte big-endian length, then that many bytes. The server receives the whole
payload into a buffer it allocates for that message (as any server answering from the whole
body must), then sends it back. One thread per connection, plain blocking sockets:
``recv_into`` and ``sendall`` move the bytes with no copy in Python.

    python -m bench.tcp_echo --port 9000
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import threading

PREFIX = 8


def recv_exactly(conn: socket.socket, view: memoryview) -> bool:
    """Fill ``view``; False if the peer closed before sending anything."""
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:])
        if n == 0:
            if got == 0:
                return False
            raise ConnectionError(f"peer closed after {got} of {len(view)} bytes")
        got += n
    return True


def handle(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = bytearray(PREFIX)
    with conn:
        while recv_exactly(conn, memoryview(head)):
            size = int.from_bytes(head, "big")
            payload = bytearray(size)
            view = memoryview(payload)
            if size and not recv_exactly(conn, view):
                return
            conn.sendall(view)
            del view, payload


def serve(host: str, port: int) -> None:
    with socket.create_server((host, port), backlog=64) as listener:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.host, args.port)


if __name__ == "__main__":
    main()
