"""A request caught in flight while the server is told to stop: shared by the tests that stop
``spatial-dropout serve`` as a process and the image as a container."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt


def poll(condition: Callable[[], bool], what: str, attempts: int = 600) -> None:
    """Wait (boundedly) for ``condition()`` to hold; these waits assert no durations."""
    for _ in range(attempts):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def in_progress(url: str) -> float:
    """The server's own count of requests in flight (the scrape asking counts itself)."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("spatial_dropout_http_requests_in_progress "):
            return float(line.split()[1])
    return 0.0


def refuses_connections(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=1)
    except httpx.TransportError:
        return True
    return False


def apply_while_stopping(
    url: str, request: dict[str, Any], stop: Callable[[], object], timeout: float = 60
) -> httpx.Response:
    """POST ``request`` to /apply, half its body at first; once the app has the request, call
    ``stop``, wait until the server listens no more, then send the rest: the answer."""
    body = json.dumps(request).encode()
    release = threading.Event()

    def slowly() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        release.wait(timeout=timeout)  # the rest only once the server has been told to stop
        yield body[len(body) // 2 :]

    def post() -> httpx.Response:
        headers = {"content-type": "application/json"}
        return httpx.post(f"{url}/apply", content=slowly(), headers=headers, timeout=timeout)

    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(post)
            # In flight: the slow request and the scrape asking.
            poll(lambda: in_progress(url) == 2, "the request reached the app")
            stop()
            poll(lambda: refuses_connections(url), "the server stopped listening")
            release.set()
            return pending.result(timeout=timeout)
    finally:
        release.set()


def dropped_whole_at_half(output: npt.ArrayLike, x: npt.NDArray[np.float32]) -> bool:
    """Each feature map (sample, channel) of an NHWC ``output`` is ``x``'s doubled (rate 0.5)
    or dropped whole."""
    out = np.asarray(output, dtype=np.float32)
    maps, inputs = (a.transpose(0, 3, 1, 2).reshape(a.shape[0] * a.shape[3], -1) for a in (out, x))
    return all(np.array_equal(o, i * 2) or not o.any() for o, i in zip(maps, inputs, strict=True))
