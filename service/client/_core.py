"""What both clients share: each call as a request to send and a parser of its answer, the
wire codecs (.npy, the V2 binary extension) and the retry policy. No I/O here: the sync and
async clients only send a ``Call`` and sleep between attempts."""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Final, Generic, TypeVar
from urllib.parse import quote

import httpx
import ml_dtypes
import numpy as np
import orjson
from numpy.typing import NDArray

from service.client.errors import (
    ApiError,
    ClientError,
    ConnectionFailed,
    NotConnected,
    error_class,
)

T = TypeVar("T")

NPY: Final = "application/x-npy"
ONNX: Final = "application/octet-stream"
JSON: Final = "application/json"
HEADER_LENGTH: Final = "Inference-Header-Content-Length"

#: The Open Inference Protocol's datatypes, as numpy dtypes (little-endian on the wire).
V2_DTYPES: Final[dict[str, np.dtype[Any]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One API call: the request, whether repeating it is harmless, and how to read the answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    #: Repeating it cannot change the server's state twice (everything but POST /layers).
    repeatable: bool = True


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how long to wait before sending a call again.

    A call is sent at most ``attempts`` times. Retried: a connection that could not be opened
    (any call: nothing was sent), and, for repeatable calls, a broken connection, a timeout,
    and 502/503/504 answers. The wait doubles from ``backoff`` up to ``max_backoff`` seconds,
    with full jitter when ``jitter`` is set; a Retry-After the server sends is waited instead,
    when it is at most ``max_retry_after`` (a longer one is raised at once: the caller decides).
    """

    attempts: int = 3
    backoff: float = 0.25
    max_backoff: float = 4.0
    max_retry_after: float = 30.0
    jitter: bool = True
    #: Called with (attempt number from 1, the error) before each wait; for logging.
    on_retry: Callable[[int, ClientError], None] | None = None

    def delay(self, attempt: int, error: ClientError, repeatable: bool) -> float | None:
        """Seconds to wait before attempt ``attempt + 1`` after ``error``; None: give up."""
        if attempt >= self.attempts or not _retryable(error, repeatable):
            return None
        if isinstance(error, ApiError) and error.retry_after is not None:
            return error.retry_after if error.retry_after <= self.max_retry_after else None
        wait = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return random.uniform(0, wait) if self.jitter else wait


def _retryable(error: ClientError, repeatable: bool) -> bool:
    if isinstance(error, NotConnected):
        return True
    if not repeatable:
        return False
    if isinstance(error, ApiError):
        return error.status in (502, 503, 504)
    return True  # the wire broke or timed out


def transport_error(exc: httpx.TransportError) -> ClientError:
    """The client's error for an httpx failure to get an answer."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return NotConnected(f"Could not connect: {exc}")
    return ConnectionFailed(f"{type(exc).__name__}: {exc}")


def retry_after(value: str | None) -> float | None:
    """Seconds of a Retry-After header (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    from datetime import UTC, datetime

    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def check(response: httpx.Response) -> httpx.Response:
    """``response`` if it succeeded, else its typed error."""
    if response.is_success:
        return response
    status = response.status_code
    try:
        document = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        document = None
    if not isinstance(document, dict):
        document = {}
    code = document.get("code")
    detail = document.get("detail", document.get("error"))
    raise error_class(status, code if isinstance(code, str) else None)(
        status,
        code if isinstance(code, str) else None,
        detail if isinstance(detail, str) else response.text or response.reason_phrase,
        title=document.get("title") if isinstance(document.get("title"), str) else None,
        body=document,
        retry_after=retry_after(response.headers.get("retry-after")),
    )


def json_of(response: httpx.Response) -> Any:
    return orjson.loads(check(response).content)


def nothing(response: httpx.Response) -> None:
    check(response)


def content_of(response: httpx.Response) -> bytes:
    return check(response).content


def next_cursor(page: Mapping[str, Any], sent: str | None) -> str | None:
    """The cursor of the page after ``page`` (None: it was the last), guarded so that a
    server repeating a cursor ends the walk with an error instead of looping forever."""
    cursor = page["next_cursor"]
    if cursor is not None and cursor == sent:
        raise ClientError(f"The server answered cursor {cursor!r} again; the listing stops.")
    return cursor if isinstance(cursor, str) else None


def segment(name: str) -> str:
    """A path segment: names may hold any character, so every reserved one is escaped."""
    return quote(name, safe="")


def flag(value: bool) -> str:
    return "true" if value else "false"


# -- .npy ----------------------------------------------------------------------------------


def to_npy(array: NDArray[Any]) -> bytes:
    """``array`` as a .npy file (never pickled)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def from_npy(data: bytes) -> NDArray[Any]:
    """The array in a .npy answer (pickles refused)."""
    array: NDArray[Any] = np.load(io.BytesIO(data), allow_pickle=False)
    # numpy writes an ml_dtypes bfloat16 array as 2-byte void, the only void the server sends.
    if array.dtype.kind == "V" and array.dtype.itemsize == 2:
        return array.view(ml_dtypes.bfloat16)
    return array


# -- the Open Inference Protocol's binary extension ----------------------------------------


def v2_datatype(dtype: np.dtype[Any]) -> str:
    """The protocol's name of a numpy dtype."""
    native = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
    for name, candidate in V2_DTYPES.items():
        if candidate == native or candidate == native.newbyteorder("="):
            return name
    raise TypeError(f"dtype {dtype} has no Open Inference Protocol datatype.")


def v2_body(
    inputs: Mapping[str, NDArray[Any]],
    parameters: Mapping[str, Any],
    outputs: Sequence[str] | None,
) -> tuple[bytes, int]:
    """An infer request with every tensor in the binary tail, and its JSON header's length."""
    header_inputs = []
    blobs = []
    for name, value in inputs.items():
        array = np.asarray(value)
        datatype = v2_datatype(array.dtype)
        raw = np.ascontiguousarray(array, dtype=V2_DTYPES[datatype]).reshape(-1)
        blob = raw.view(np.uint8).tobytes()
        blobs.append(blob)
        header_inputs.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(blob)},
            }
        )
    header: dict[str, Any] = {
        "inputs": header_inputs,
        "parameters": {**parameters, "binary_data_output": True},
    }
    if outputs is not None:
        header["outputs"] = [
            {"name": name, "parameters": {"binary_data": True}} for name in outputs
        ]
    head = orjson.dumps(header)
    return head + b"".join(blobs), len(head)


def v2_answer(response: httpx.Response) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
    """The outputs (by name, in the server's order) and parameters of an infer answer."""
    data = bytearray(check(response).content)  # one copy, so the outputs are writable
    length = response.headers.get(HEADER_LENGTH)
    size = int(length) if length is not None else len(data)
    header = orjson.loads(memoryview(data)[:size])
    offset = size
    outputs: dict[str, NDArray[Any]] = {}
    for out in header["outputs"]:
        dtype = V2_DTYPES[out["datatype"]]
        shape = tuple(out["shape"])
        nbytes = (out.get("parameters") or {}).get("binary_data_size")
        if nbytes is None:
            array = np.asarray(out["data"], dtype=dtype).reshape(shape)
        else:
            count = math.prod(shape)
            array = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
            offset += nbytes
        outputs[out["name"]] = array
    return outputs, dict(header.get("parameters") or {})
