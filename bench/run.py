"""Issue 5's benchmark: how close each path of the service comes to its physical limit.

Not a test: nothing here asserts a time. Every figure is ``median (min-max)`` over
``--repeat`` runs, next to a limit measured in the same run, interleaved with it (so drift on
a shared machine hits both), and the ratio of the two. Progress goes to stderr; stdout gets one
markdown table, ready to paste into the README.

    python -m bench.run                    # everything, about 6 minutes on 2 cores
    python -m bench.run --quick            # smoke run, under 2 minutes
    python -m bench.run --only kernel,rss --repeat 9

Sections (``--only``/``--skip``): kernel, http, json, small, rss, workers. Every server is a
child process bound to 127.0.0.1, stopped at the end, on Ctrl-C and on errors.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ml_dtypes
import numpy as np
import orjson
from numpy.typing import NDArray

from bench import load
from bench.client import EchoConn, HttpConn
from bench.procs import HOST, LAYER, ROOT, Proc, Processes, status_kib
from service.core import kernel
from service.core.config import DataFormat, DropoutConfig, Kind

SECTIONS = ("kernel", "http", "json", "small", "rss", "workers")
MIB = 2**20
SEED = 1
RATE = 0.5  # the layer the servers hold (bench.procs.create_layer) has the same rate
NPY = "application/x-npy"
JSON = "application/json"
#: channels_last float32 shapes; float16 and bfloat16 double the batch so the bytes match, and
#: channels_first is the same tensor transposed to (N, C, H, W).
F32_SHAPES = {4 * MIB: (16, 32, 32, 64), 128 * MIB: (32, 128, 128, 64)}
SMALL_SHAPE = (1, 16, 16, 8)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- figures and rows --------------------------------------------------------------------


@dataclass
class Stat:
    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def show(self, scale: float = 1.0, unit: str = "") -> str:
        med, lo, hi = (v * scale for v in (self.median, min(self.values), max(self.values)))
        digits = _digits(med)
        suffix = f" {unit}" if unit else ""
        return f"{med:.{digits}f}{suffix} ({lo:.{digits}f}-{hi:.{digits}f})"


def _digits(value: float) -> int:
    value = abs(value)
    return 0 if value >= 100 else 1 if value >= 10 else 2 if value >= 1 else 3


def ms(stat: Stat) -> str:
    return stat.show(1000, "ms")


@dataclass
class Target:
    """A goal on a ratio: ``at_least`` (higher is better) or at most (lower is better)."""

    bound: float
    at_least: bool

    def verdict(self, ratio: float) -> str:
        sign = ">=" if self.at_least else "<="
        met = ratio >= self.bound if self.at_least else ratio <= self.bound
        if met:
            return f"{sign} {self.bound:g}: met"
        return f"{sign} {self.bound:g}: **missed** by {abs(ratio - self.bound):.2f}"


@dataclass
class Row:
    benchmark: str
    measured: str
    limit: str
    limit_measured: str
    ratio: str
    target: str = "-"


def compare(
    benchmark: str,
    measured: Stat,
    limit: str,
    baseline: Stat,
    *,
    higher_is_better: bool,
    what: str,
    target: Target | None = None,
    show: Callable[[Stat], str] = ms,
) -> Row:
    """A row; the ratio is limit/measured (speeds) or measured/limit (times, sizes)."""
    if higher_is_better:  # e.g. copy time / kernel time: 1.0 is copy speed
        ratio = baseline.median / measured.median
    else:
        ratio = measured.median / baseline.median
    return Row(
        benchmark,
        show(measured),
        limit,
        show(baseline),
        f"{ratio:.2f} {what}",
        target.verdict(ratio) if target else "-",
    )


def table(rows: list[Row]) -> str:
    head = ("benchmark", "measured", "limit (same run)", "limit measured", "ratio", "target")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = (r.benchmark, r.measured, r.limit, r.limit_measured, r.ratio, r.target)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- shared state ------------------------------------------------------------------------


@dataclass
class Context:
    args: argparse.Namespace
    procs: Processes
    _service: Proc | None = None

    @property
    def repeat(self) -> int:
        n: int = self.args.repeat
        return n

    def service(self) -> Proc:
        """The one-worker service most sections share, started on first use."""
        if self._service is None:
            log("starting spatial-dropout serve (1 worker)")
            self._service = self.procs.service()
        return self._service


def layer_config(data_format: DataFormat) -> DropoutConfig:
    return DropoutConfig(kind=Kind.SPATIAL_2D, rate=RATE, data_format=data_format, name=LAYER)


def tensor(shape: tuple[int, ...], dtype: type[np.floating[Any]] = np.float32) -> NDArray[Any]:
    """Normal values (no zeros, subnormals or NaN), a 1 MiB random block tiled: drawing
    128 MiB of them afresh would take longer than the figures they feed."""
    block = np.random.default_rng(5).standard_normal(2**18, dtype=np.float32)
    return np.resize(block.astype(dtype), shape)


def npy_bytes(x: NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, x)
    return buffer.getvalue()


def timed(fn: Callable[[], object], inner: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def size_label(nbytes: int) -> str:
    return f"{nbytes / MIB:g} MiB"


# --- kernel ------------------------------------------------------------------------------


def section_kernel(ctx: Context) -> list[Row]:
    """kernel.apply (training) with out= a preallocated buffer, and in place (out=x), against
    np.copyto of the same tensor; the ratio is copy time / kernel time (1.0: copy speed)."""
    rows: list[Row] = []
    min_sample = 0.01 if ctx.args.quick else 0.05
    for nbytes, shape in F32_SHAPES.items():
        for dtype in (np.float32, np.float16, ml_dtypes.bfloat16):
            for data_format in (DataFormat.CHANNELS_LAST, DataFormat.CHANNELS_FIRST):
                n, h, w, c = shape
                if np.dtype(dtype).itemsize == 2:
                    n *= 2
                dims = (n, h, w, c) if data_format is DataFormat.CHANNELS_LAST else (n, c, h, w)
                name = f"{np.dtype(dtype).name} {data_format.value} {size_label(nbytes)}"
                log(f"kernel {name} {dims}")
                rows += _kernel_case(ctx, name, dims, dtype, data_format, nbytes, min_sample)
    return rows


def _kernel_case(
    ctx: Context,
    name: str,
    dims: tuple[int, ...],
    dtype: type[np.floating[Any]],
    data_format: DataFormat,
    nbytes: int,
    min_sample: float,
) -> list[Row]:
    config = layer_config(data_format)
    src = tensor(dims, dtype)
    assert src.nbytes == nbytes, (src.nbytes, nbytes)
    x, out, dst = np.empty_like(src), np.empty_like(src), np.empty_like(src)
    for buffer in (x, out, dst):  # fault every page in before timing
        np.copyto(buffer, src)
    seed = SEED

    def copy() -> None:
        np.copyto(dst, src)

    def to_buffer() -> None:
        kernel.apply(config, src, training=True, seed=seed, out=out)

    def in_place() -> None:
        kernel.apply(config, x, training=True, seed=seed, out=x)

    for fn in (copy, to_buffer, in_place):  # warm up
        fn()
    inner = max(1, math.ceil(min_sample / timed(copy)))
    copies, buffered, in_places = Stat(), Stat(), Stat()
    for run in range(ctx.repeat):
        seed = SEED + run  # another mask each run: the spread covers the mask's effect
        copies.add(timed(copy, inner))
        buffered.add(timed(to_buffer, inner))
        np.copyto(x, src)  # in place grows x by 1/keep per call: start each run afresh
        in_places.add(timed(in_place, inner))
    target = Target(0.9, at_least=True) if nbytes >= 128 * MIB else None
    return [
        compare(
            f"kernel {name}, out= buffer",
            buffered,
            "np.copyto",
            copies,
            higher_is_better=True,
            what="of copy speed",
            target=target,
        ),
        compare(
            f"kernel {name}, in place (out=x)",
            in_places,
            "np.copyto",
            copies,
            higher_is_better=True,
            what="of copy speed",
            target=target,
        ),
    ]


# --- binary /apply and /v2 ---------------------------------------------------------------


def v2_body(x: NDArray[Any]) -> tuple[bytes, int]:
    """A binary infer request as tritonclient builds it: JSON header, then raw bytes."""
    parameters = {"training": True, "seed": SEED}
    try:
        import tritonclient.http as triton
    except ImportError:  # the same message, built by hand
        raw = np.ascontiguousarray(x, dtype="<f4").tobytes()
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": list(x.shape),
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
                "parameters": parameters,
            }
        )
        return header + raw, len(header)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    out = triton.InferRequestedOutput("output", binary_data=True)
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [inp], outputs=[out], parameters=parameters
    )
    return bytes(body), int(json_size or len(body))


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise RuntimeError(f"wrong answer from {what}: the benchmark would measure a bug")


def _check_npy(answer: Any, expected: NDArray[Any], what: str) -> None:
    _check(answer.status == 200, f"{what} (status {answer.status}: {bytes(answer.body[:300])!r})")
    got = np.load(io.BytesIO(answer.body), allow_pickle=False)
    _check(np.array_equal(got, expected), what)


def _check_v2(answer: Any, expected: NDArray[Any], what: str) -> None:
    _check(answer.status == 200, f"{what} (status {answer.status}: {bytes(answer.body[:300])!r})")
    size = int(answer.headers["inference-header-content-length"])
    header = orjson.loads(answer.body[:size])
    output = header["outputs"][0]
    got = np.frombuffer(answer.body[size:], dtype="<f4").reshape(output["shape"])
    _check(np.array_equal(got, expected), what)


def section_http(ctx: Context) -> list[Row]:
    """Binary /apply (.npy) and /v2 binary infer against a TCP echo of the same bytes and the
    in-process kernel; ratios are HTTP time / limit time."""
    service = ctx.service()
    log("starting the TCP echo server")
    echo_proc = ctx.procs.tcp_echo()
    rows: list[Row] = []
    config = layer_config(DataFormat.CHANNELS_LAST)
    npy_target = f"/apply?layer={LAYER}&training=true&seed={SEED}"
    v2_target = f"/v2/models/{LAYER}/infer"
    with HttpConn(HOST, service.port) as http, EchoConn(HOST, echo_proc.port) as echo:
        for nbytes, shape in F32_SHAPES.items():
            label = size_label(nbytes)
            log(f"http {label} float32 {shape}: building bodies")
            x = tensor(shape)
            expected = kernel.apply(config, x, training=True, seed=SEED).output.copy()
            out = np.empty_like(x)
            npy = npy_bytes(x)
            v2, v2_json = v2_body(x)
            npy_headers = {"Content-Type": NPY}
            v2_headers = {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(v2_json),
            }

            def apply_npy(body: bytes = npy, headers: dict[str, str] = npy_headers) -> Any:
                return http.request("POST", npy_target, body, headers)

            def infer_v2(body: bytes = v2, headers: dict[str, str] = v2_headers) -> Any:
                return http.request("POST", v2_target, body, headers)

            def run_kernel(x: NDArray[Any] = x, out: NDArray[Any] = out) -> None:
                kernel.apply(config, x, training=True, seed=SEED, out=out)

            # Warm up and check every answer once, untimed.
            _check_npy(apply_npy(), expected, "POST /apply (.npy)")
            _check_v2(infer_v2(), expected, "POST /v2 infer (binary)")
            for body in (npy, v2):
                view, _ = echo.echo(body)
                _check(view == memoryview(body), "the TCP echo")
            run_kernel()
            stats = {k: Stat() for k in ("npy", "echo_npy", "v2", "echo_v2", "kernel")}
            for run in range(ctx.repeat):
                log(f"http {label}: run {run + 1}/{ctx.repeat}")
                stats["echo_npy"].add(echo.echo(npy)[1])
                stats["npy"].add(apply_npy().seconds)
                stats["echo_v2"].add(echo.echo(v2)[1])
                stats["v2"].add(infer_v2().seconds)
                stats["kernel"].add(timed(run_kernel))
            bound = 1.5 if nbytes >= 128 * MIB else 2.0
            for key, what, extra in (("npy", "binary /apply (.npy)", ""), ("v2", "V2 infer", "")):
                name = f"{what} {label} float32{extra}"
                rows.append(
                    compare(
                        name,
                        stats[key],
                        f"TCP echo of the same {len(npy if key == 'npy' else v2)} B",
                        stats[f"echo_{key}"],
                        higher_is_better=False,
                        what="x echo",
                        target=Target(bound, at_least=False),
                    )
                )
                rows.append(
                    compare(
                        name,
                        stats[key],
                        "in-process kernel, out= buffer",
                        stats["kernel"],
                        higher_is_better=False,
                        what="x kernel",
                    )
                )
            del x, out, npy, v2, expected
    ctx.procs.stop(echo_proc)
    return rows


# --- JSON /apply -------------------------------------------------------------------------


def section_json(ctx: Context) -> list[Row]:
    """JSON /apply of 4 MiB float32 (nested and flat) against orjson encode+decode of the
    same tensor in process; the ratio is HTTP time / orjson time."""
    service = ctx.service()
    rows: list[Row] = []
    shape = F32_SHAPES[4 * MIB]
    x = tensor(shape)
    expected = kernel.apply(
        layer_config(DataFormat.CHANNELS_LAST), x, training=True, seed=SEED
    ).output
    opt = orjson.OPT_SERIALIZE_NUMPY
    with HttpConn(HOST, service.port) as http:
        for form, value in (("nested", x), ("flat", x.reshape(-1))):
            log(f"json {form} 4 MiB float32 {shape}")
            wire: Any = (
                value
                if form == "nested"
                else {
                    "shape": list(shape),
                    "dtype": "float32",
                    "data": value,
                }
            )
            body = orjson.dumps(
                {"layer": LAYER, "training": True, "seed": SEED, "input": wire}, option=opt
            )

            def post(body: bytes = body) -> Any:
                return http.request("POST", "/apply", body, {"Content-Type": JSON})

            def orjson_round_trip(value: NDArray[Any] = value) -> None:
                orjson.loads(orjson.dumps(value, option=opt))

            answer = post()
            _check(answer.status == 200, f"JSON /apply ({form}): {bytes(answer.body[:300])!r}")
            output = orjson.loads(answer.body)["output"]
            got = np.asarray(output if form == "nested" else output["data"], dtype=np.float32)
            _check(np.array_equal(got.reshape(shape), expected), f"JSON /apply ({form})")
            orjson_round_trip()
            took, limit = Stat(), Stat()
            for _ in range(ctx.repeat):
                took.add(post().seconds)
                limit.add(timed(orjson_round_trip))
            rows.append(
                compare(
                    f"JSON /apply 4 MiB float32, {form} ({len(body) / MIB:.1f} MiB body)",
                    took,
                    f"orjson dumps+loads of the tensor ({form})",
                    limit,
                    higher_is_better=False,
                    what="x orjson",
                    target=Target(1.5, at_least=False),
                )
            )
    return rows


# --- small tensors under load ------------------------------------------------------------


@dataclass
class LoadStats:
    rps: Stat = field(default_factory=Stat)
    p50: Stat = field(default_factory=Stat)
    p99: Stat = field(default_factory=Stat)

    def add(self, result: load.LoadResult) -> None:
        self.rps.add(result.rps)
        self.p50.add(result.p50_ms / 1000)
        self.p99.add(result.p99_ms / 1000)


def _small_bodies(directory: Path) -> dict[str, tuple[Path, str, str]]:
    """form -> (body file, content type, /apply target) for the 1x16x16x8 float32 tensor."""
    x = tensor(SMALL_SHAPE)
    flat = {"shape": list(SMALL_SHAPE), "dtype": "float32", "data": x.reshape(-1)}
    json_body = orjson.dumps(
        {"layer": LAYER, "training": True, "seed": SEED, "input": flat},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    (directory / "small.json").write_bytes(json_body)
    (directory / "small.npy").write_bytes(npy_bytes(x))
    return {
        "JSON flat": (directory / "small.json", JSON, "/apply"),
        ".npy": (directory / "small.npy", NPY, f"/apply?layer={LAYER}&training=true&seed={SEED}"),
    }


def _preflight(port: int, target: str, body: Path, content_type: str) -> None:
    with HttpConn(HOST, port) as http:
        answer = http.request("POST", target, body.read_bytes(), {"Content-Type": content_type})
        _check(answer.status == 200, f"POST {target}: {bytes(answer.body[:300])!r}")


def _point(port: int, target: str, body: Path, content_type: str, conns: int, secs: float) -> Any:
    return load.measure(f"http://{HOST}:{port}{target}", body, content_type, conns, secs)


def section_small(ctx: Context) -> list[Row]:
    """Small /apply requests under closed-loop load at 1 and 8 connections, against the bare
    ASGI echo app under the same uvicorn settings; req/s ratio is service / echo."""
    service = ctx.service()
    log("starting the bare ASGI echo app")
    echo = ctx.procs.asgi_echo()
    bodies = _small_bodies(ctx.procs.dir)
    for body, content_type, target in bodies.values():
        _preflight(service.port, target, body, content_type)
        _preflight(echo.port, target, body, content_type)
    secs = ctx.args.duration
    results: dict[tuple[str, int, str], LoadStats] = {}
    for run in range(ctx.repeat):
        for conns in (1, 8):
            for form, (body, content_type, target) in bodies.items():
                for who, proc in (("echo", echo), ("service", service)):
                    log(f"small {form} {conns} conn, {who}: run {run + 1}/{ctx.repeat}")
                    point = _point(proc.port, target, body, content_type, conns, secs)
                    results.setdefault((form, conns, who), LoadStats()).add(point)
    ctx.procs.stop(echo)
    rows: list[Row] = []
    for conns in (1, 8):
        for form in bodies:
            svc, base = results[form, conns, "service"], results[form, conns, "echo"]
            name = f"small {form} /apply 1x16x16x8, {conns} conn"
            rows.append(
                compare(
                    f"{name}: req/s",
                    svc.rps,
                    "bare ASGI echo, same body",
                    base.rps,
                    higher_is_better=False,
                    what="of echo req/s",
                    target=Target(0.6, at_least=True) if conns == 8 else None,
                    show=lambda s: s.show(1, "req/s"),
                )
            )
            for pct in ("p50", "p99"):
                rows.append(
                    compare(
                        f"{name}: {pct} latency",
                        getattr(svc, pct),
                        "bare ASGI echo, same body",
                        getattr(base, pct),
                        higher_is_better=False,
                        what="x echo",
                    )
                )
    return rows


# --- peak RSS ----------------------------------------------------------------------------


def _reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > clear_refs``, Linux 4.0+)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return status_kib(pid, "VmHWM") <= status_kib(pid, "VmRSS") + 1024


def section_rss(ctx: Context) -> list[Row]:
    """Peak RSS of a fresh server process while it answers one 128 MiB .npy /apply, above its
    idle RSS just before; the ratio is that growth / the payload."""
    x = tensor(F32_SHAPES[128 * MIB])
    expected = kernel.apply(
        layer_config(DataFormat.CHANNELS_LAST), x, training=True, seed=SEED
    ).output
    body = npy_bytes(x)
    del x
    target = f"/apply?layer={LAYER}&training=true&seed={SEED}"
    small = npy_bytes(tensor(SMALL_SHAPE))
    growth, idle = Stat(), Stat()
    payload = Stat()
    server: Proc | None = None
    try:
        for run in range(ctx.repeat):
            if server is None:
                log("starting a fresh server for the RSS measurement")
                server = ctx.procs.service()
                with HttpConn(HOST, server.port) as http:  # warm the code paths, not the heap
                    http.request("POST", target, small, {"Content-Type": NPY})
            time.sleep(0.2)
            rss = status_kib(server.pid, "VmRSS")
            resettable = _reset_peak(server.pid)
            if not resettable:
                log("cannot reset VmHWM: the peak may include start-up; a fresh server per run")
            with HttpConn(HOST, server.port) as http:
                answer = http.request("POST", target, body, {"Content-Type": NPY})
                peak = status_kib(server.pid, "VmHWM")
                if run == 0:
                    _check_npy(answer, expected, "POST /apply (.npy) 128 MiB")
            log(
                f"rss run {run + 1}/{ctx.repeat}: idle {rss / 1024:.0f} MiB, peak {peak / 1024:.0f}"
            )
            idle.add(rss * 1024)
            growth.add((peak - rss) * 1024)
            payload.add(len(body))
            if not resettable:
                ctx.procs.stop(server)
                server = None
    finally:
        if server is not None:
            ctx.procs.stop(server)
    return [
        compare(
            f"peak RSS above idle ({idle.show(1 / MIB, 'MiB')}), one 128 MiB .npy /apply",
            growth,
            "the request body",
            payload,
            higher_is_better=False,
            what="x payload",
            target=Target(2.5, at_least=False),
            show=lambda s: s.show(1 / MIB, "MiB"),
        )
    ]


# --- workers -----------------------------------------------------------------------------


def section_workers(ctx: Context) -> list[Row]:
    """Small .npy /apply at 8 connections: serve --workers 2 against --workers 1."""
    one = ctx.service()
    log("starting spatial-dropout serve --workers 2")
    two = ctx.procs.service(workers=2)
    body, content_type, target = _small_bodies(ctx.procs.dir)[".npy"]
    for proc in (one, two):
        _preflight(proc.port, target, body, content_type)
    stats = {1: LoadStats(), 2: LoadStats()}
    for run in range(ctx.repeat):
        for workers, proc in ((1, one), (2, two)):
            log(f"workers {workers}, 8 conn: run {run + 1}/{ctx.repeat}")
            stats[workers].add(_point(proc.port, target, body, content_type, 8, ctx.args.duration))
    ctx.procs.stop(two)
    return [
        compare(
            "small .npy /apply, 8 conn, serve --workers 2: req/s",
            stats[2].rps,
            "serve --workers 1",
            stats[1].rps,
            higher_is_better=False,
            what="x one worker",
            show=lambda s: s.show(1, "req/s"),
        )
    ]


# --- main --------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Context], list[Row]]] = {
    "kernel": section_kernel,
    "http": section_http,
    "json": section_json,
    "small": section_small,
    "rss": section_rss,
    "workers": section_workers,
}


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def caption(args: argparse.Namespace, elapsed: float, load_average: str) -> str:
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    if _git("status", "--porcelain", "--", "service"):
        commit += " + uncommitted changes in service/"
    command = " ".join(["python -m bench.run", *sys.argv[1:]]).strip()
    tool = "wrk (1 thread)" if load.tool_name() == "wrk" else "bench/load.py (asyncio, 1 process)"
    blas = [
        f"{k}={os.environ[k]}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ
    ]
    return (
        f"Measured {dt.date.today().isoformat()} at commit {commit}, on {os.cpu_count()} cores "
        f"({_cpu()}, load average {load_average} at the start), Python "
        f"{platform.python_version()}, numpy {np.__version__}"
        f"{', ' + ' '.join(blas) if blas else ''}: `{command}` ({elapsed / 60:.1f} min; "
        f"{args.repeat} runs per figure, shown as median (min-max)). Large requests: a raw-socket "
        f"HTTP/1.1 client (bench/client.py: keep-alive, sendall + recv_into a reused buffer), "
        f"timed from first byte sent to last byte received. Load: {tool}, "
        f"{args.duration:g} s per point."
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="2 runs, 1 s load points")
    parser.add_argument("--repeat", type=int, help="runs per figure (default 5; quick 2)")
    parser.add_argument("--duration", type=float, help="seconds per load point (5; quick 1)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--skip", default="", help="comma-separated sections to leave out")
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (2 if args.quick else 5)
    args.duration = args.duration or (1.0 if args.quick else 5.0)
    wanted = [s for s in args.only.split(",") if s]
    skipped = {s for s in args.skip.split(",") if s}
    unknown = (set(wanted) | skipped) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; known: {SECTIONS}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.sections = [s for s in SECTIONS if s in wanted and s not in skipped]
    return args


@contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    # Ctrl-C too, even where the shell started us with SIGINT ignored (a background job).
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.monotonic()
    load_average = f"{os.getloadavg()[0]:.1f}"
    rows: list[Row] = []
    failed = interrupted = False
    log(f"sections: {', '.join(args.sections)}; {args.repeat} runs; load via {load.tool_name()}")
    with _signals_as_interrupt(), Processes() as procs:
        ctx = Context(args, procs)
        try:
            for section in args.sections:
                log(f"== {section}")
                try:
                    rows += RUNNERS[section](ctx)
                except Exception as exc:
                    failed = True
                    traceback.print_exc()
                    rows.append(Row(section, f"FAILED: {exc}".replace("\n", " ")[:200], *"----"))
        except KeyboardInterrupt:
            interrupted = True
            log("interrupted: servers stopped; the table has the sections that finished")
    print(caption(args, time.monotonic() - started, load_average))
    print()
    print(table(rows))
    if interrupted:
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
