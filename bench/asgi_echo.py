"""The framework floor for small requests: an ASGI app that reads the body and returns it.

Served by uvicorn with exactly what ``spatial-dropout serve`` passes it (host, port, workers,
log level; uvicorn's default loop and HTTP implementation), so the difference between the two
is the service's own work: routing, validation, decoding, the kernel, encoding.

    python -m bench.asgi_echo --port 9001 [--workers 1] [--log-level warning]
"""

from __future__ import annotations

import argparse
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    content_type = b"application/octet-stream"
    for key, value in scope["headers"]:
        if key == b"content-type":
            content_type = value
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    uvicorn.run(
        "bench.asgi_echo:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
    )


if __name__ == "__main__":
    main()
