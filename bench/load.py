"""Closed-loop load: N keep-alive connections POSTing one body for D seconds.

``wrk`` (Debian's ``wrk``, driven by bench/wrk_post.lua) when it is installed; otherwise a
Python generator (asyncio with uvloop when present, raw HTTP/1.1, one process), which costs
more CPU per request and so understates a fast server's rate on a 2-core machine. Both report
requests per second and the 50th and 99th percentile latency; any non-200 answer or socket
error fails the point, so an error page is never benchmarked.

    python -m bench.load --url http://127.0.0.1:8000/apply --body x.npy \
        --content-type application/x-npy --connections 8 --duration 5   # the Python one
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

LUA = Path(__file__).with_name("wrk_post.lua")


@dataclass(frozen=True)
class LoadResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    tool: str


def tool_name() -> str:
    return "wrk" if shutil.which("wrk") else "python-asyncio"


@dataclass(frozen=True)
class Point:
    """One load point: ``connections`` keep-alive connections POSTing ``body`` to ``url``."""

    url: str
    body: Path
    content_type: str
    connections: int
    duration: float
    header: str | None = None  # one more request header, "Name: value"


def measure(point: Point) -> LoadResult:
    return _wrk(point) if shutil.which("wrk") else _python(point)


def _wrk(point: Point) -> LoadResult:
    seconds = max(1, round(point.duration))
    command = [
        "wrk",
        *("-t", "1", "-c", str(point.connections), "-d", f"{seconds}s", "--timeout", "30s"),
        *("-s", str(LUA), point.url),
    ]
    env = {**os.environ, "BENCH_BODY": str(point.body), "BENCH_CONTENT_TYPE": point.content_type}
    if point.header is not None:
        env["BENCH_HEADER"] = point.header
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    result = json.loads(lines[-1].removeprefix("BENCH_RESULT "))
    errors = {k: v for k, v in result["errors"].items() if v}
    if errors or result["requests"] == 0:
        raise RuntimeError(f"wrk saw errors {errors} on {point.url}:\n{done.stdout}")
    return LoadResult(
        rps=result["requests"] / (result["duration_us"] / 1e6),
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        requests=result["requests"],
        tool="wrk",
    )


def _python(point: Point) -> LoadResult:
    command = [
        sys.executable,
        *("-m", "bench.load", "--url", point.url, "--body", str(point.body)),
        *("--content-type", point.content_type, "--connections", str(point.connections)),
        *("--duration", str(point.duration)),
        *(("--header", point.header) if point.header is not None else ()),
    ]
    root = Path(__file__).resolve().parent.parent
    timeout = point.duration + 120
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=root)
    if done.returncode != 0:
        raise RuntimeError(f"the Python load generator failed: {done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return LoadResult(**result)


async def _connection(
    host: str, port: int, request: bytes, deadline: float, latencies: list[float]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split()[1])
            length = 0
            for line in lines:
                key, _, value = line.partition(":")
                if key.strip().lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            if status != 200:
                raise RuntimeError(f"status {status}")
            latencies.append(time.perf_counter() - start)
    finally:
        writer.close()


async def _run(
    url: str, body: bytes, content_type: str, connections: int, duration: float, header: str
) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    request = (
        f"POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"{header + chr(13) + chr(10) if header else ''}Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1") + body
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + duration
    await asyncio.gather(
        *(_connection(host, port, request, deadline, latencies) for _ in range(connections))
    )
    elapsed = time.perf_counter() - start
    latencies.sort()
    if not latencies:
        raise RuntimeError("no request completed")

    def pick(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "requests": len(latencies),
        "tool": "python-asyncio",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", type=Path, required=True)
    parser.add_argument("--content-type", required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--header", default="", help='one more header, "Name: value"')
    args = parser.parse_args()
    body = args.body.read_bytes()
    work = _run(args.url, body, args.content_type, args.connections, args.duration, args.header)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(work)
    else:
        result = uvloop.run(work)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
