"""The drain: what SIGTERM does first, so that a balancer stops sending before the port closes.

A balancer learns that a replica is going from its readiness probe, some seconds after the
replica knows. So on SIGTERM the process first reports not ready (``/readyz`` 503, gRPC health
NOT_SERVING) while it keeps serving, new connections included, for ``drain_seconds``; only then
does uvicorn's own stop begin (the port closes, in-flight requests finish within
``graceful_shutdown_seconds``, the store closes, exit 0). A second SIGTERM stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

logger = logging.getLogger("service.drain")

Handler = Callable[[int, FrameType | None], Any]


class Drain:
    """One process's drain: whether it has begun, and the SIGTERM handler that begins it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._began: float | None = None

    @property
    def draining(self) -> bool:
        return self._began is not None

    def begin(self) -> None:
        """Report not ready from now on."""
        if self._began is None:
            self._began = time.monotonic()

    def install(self) -> bool:
        """Put the drain in front of the SIGTERM handler the server installed (uvicorn's, which
        starts its stop); False where it cannot: no drain asked for, or not the main thread."""
        if self.seconds <= 0 or threading.current_thread() is not threading.main_thread():
            return False
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return False
        loop = asyncio.get_running_loop()

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            if self.draining:  # told twice: stop now
                previous(signum, frame)
                return
            self.begin()
            logger.warning(
                "SIGTERM: not ready from now on, serving for %g s more, then stopping",
                self.seconds,
            )
            # A signal handler may interrupt the loop anywhere: only this call is safe there.
            loop.call_soon_threadsafe(loop.call_later, self.seconds, previous, signum, None)

        signal.signal(signal.SIGTERM, on_sigterm)
        return True
