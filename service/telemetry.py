"""What one request did, for its log line and the metrics: its id and the tensor bytes it moved.

A context variable carries it, so code far from HTTP (the dataplane, in a worker thread: the
thread pool copies the context) can report without knowing about requests.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass


@dataclass(slots=True)
class RequestContext:
    request_id: str
    tensor_bytes_in: int = 0
    tensor_bytes_out: int = 0


_current: ContextVar[RequestContext | None] = ContextVar("spatial_dropout_request", default=None)


def begin(context: RequestContext) -> Token[RequestContext | None]:
    return _current.set(context)


def end(token: Token[RequestContext | None]) -> None:
    _current.reset(token)


def current() -> RequestContext | None:
    """The request being served, or None outside one (start-up, the command line, tests)."""
    return _current.get()


def record_tensors(bytes_in: int, bytes_out: int) -> None:
    """Count a tensor run through a layer: ``bytes_in`` read, ``bytes_out`` answered."""
    context = _current.get()
    if context is not None:
        context.tensor_bytes_in += bytes_in
        context.tensor_bytes_out += bytes_out
