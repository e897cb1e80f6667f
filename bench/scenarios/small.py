"""Small /apply and V2 infer requests under closed-loop load against a bare ASGI echo app."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench import load
from bench.client import HttpConn
from bench.common import JSON, NPY, SEED, SMALL_SHAPE, Context, check, log, npy_bytes, tensor
from bench.procs import LAYER
from bench.scenarios.binary import v2_body
from bench.stats import Row, Stat, Target, compare
from harness.process import HOST


@dataclass
class LoadStats:
    rps: Stat = field(default_factory=Stat)
    p50: Stat = field(default_factory=Stat)
    p99: Stat = field(default_factory=Stat)

    def add(self, result: load.LoadResult) -> None:
        self.rps.add(result.rps)
        self.p50.add(result.p50_ms / 1000)
        self.p99.add(result.p99_ms / 1000)


@dataclass(frozen=True)
class Form:
    body: Path
    content_type: str
    target: str
    header: str | None = None  # one more request header, "Name: value"
    target_ratio: float | None = None  # the least req/s of the echo's, at 8 connections


def small_bodies(directory: Path) -> dict[str, Form]:
    """The 1x16x16x8 float32 tensor as each request form that carries it."""
    x = tensor(SMALL_SHAPE)
    flat = {"shape": list(SMALL_SHAPE), "dtype": "float32", "data": x.reshape(-1)}
    json_body = orjson.dumps(
        {"layer": LAYER, "training": True, "seed": SEED, "input": flat},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    v2, v2_json = v2_body(x)
    (directory / "small.json").write_bytes(json_body)
    (directory / "small.npy").write_bytes(npy_bytes(x))
    (directory / "small.v2").write_bytes(v2)
    npy_target = f"/apply?layer={LAYER}&training=true&seed={SEED}"
    return {
        "JSON flat /apply": Form(directory / "small.json", JSON, "/apply", target_ratio=0.3),
        ".npy /apply": Form(directory / "small.npy", NPY, npy_target, target_ratio=0.4),
        "V2 binary infer": Form(
            directory / "small.v2",
            "application/octet-stream",
            f"/v2/models/{LAYER}/infer",
            f"Inference-Header-Content-Length: {v2_json}",
            target_ratio=0.4,
        ),
    }


def preflight(port: int, form: Form) -> None:
    headers = {"Content-Type": form.content_type}
    if form.header is not None:
        name, _, value = form.header.partition(": ")
        headers[name] = value
    with HttpConn(HOST, port) as http:
        answer = http.request("POST", form.target, form.body.read_bytes(), headers)
        check(answer.status == 200, f"POST {form.target}: {bytes(answer.body[:300])!r}")


def load_point(port: int, form: Form, conns: int, secs: float) -> Any:
    url = f"http://{HOST}:{port}{form.target}"
    return load.measure(load.Point(url, form.body, form.content_type, conns, secs, form.header))


def run(ctx: Context) -> list[Row]:
    """Small requests under closed-loop load at 1 and 8 connections, against the bare ASGI
    echo app under the same uvicorn settings; req/s ratio is service / echo."""
    service = ctx.service()
    log("starting the bare ASGI echo app")
    echo = ctx.procs.asgi_echo()
    bodies = small_bodies(ctx.procs.dir)
    for form in bodies.values():
        preflight(service.port, form)
        preflight(echo.port, form)
    secs = ctx.args.duration
    results: dict[tuple[str, int, str], LoadStats] = {}
    for run in range(ctx.repeat):
        for conns in (1, 8):
            for label, form in bodies.items():
                for who, proc in (("echo", echo), ("service", service)):
                    log(f"small {label} {conns} conn, {who}: run {run + 1}/{ctx.repeat}")
                    point = load_point(proc.port, form, conns, secs)
                    results.setdefault((label, conns, who), LoadStats()).add(point)
    ctx.procs.stop(echo)
    rows: list[Row] = []
    for conns in (1, 8):
        for label, form in bodies.items():
            svc, base = results[label, conns, "service"], results[label, conns, "echo"]
            name = f"small {label} 1x16x16x8, {conns} conn"
            least = form.target_ratio if conns == 8 else None
            rows.append(
                compare(
                    f"{name}: req/s",
                    svc.rps,
                    "bare ASGI echo, same body",
                    base.rps,
                    higher_is_better=False,
                    what="of echo req/s",
                    target=None if least is None else Target(least, at_least=True),
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
