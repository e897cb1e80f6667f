"""Small /apply requests under closed-loop load against a bare ASGI echo app."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench import load
from bench.client import HttpConn
from bench.common import JSON, NPY, SEED, SMALL_SHAPE, Context, check, log, npy_bytes, tensor
from bench.procs import LAYER
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


def small_bodies(directory: Path) -> dict[str, tuple[Path, str, str]]:
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


def preflight(port: int, target: str, body: Path, content_type: str) -> None:
    with HttpConn(HOST, port) as http:
        answer = http.request("POST", target, body.read_bytes(), {"Content-Type": content_type})
        check(answer.status == 200, f"POST {target}: {bytes(answer.body[:300])!r}")


def load_point(
    port: int, target: str, body: Path, content_type: str, conns: int, secs: float
) -> Any:
    return load.measure(f"http://{HOST}:{port}{target}", body, content_type, conns, secs)


def run(ctx: Context) -> list[Row]:
    """Small /apply requests under closed-loop load at 1 and 8 connections, against the bare
    ASGI echo app under the same uvicorn settings; req/s ratio is service / echo."""
    service = ctx.service()
    log("starting the bare ASGI echo app")
    echo = ctx.procs.asgi_echo()
    bodies = small_bodies(ctx.procs.dir)
    for body, content_type, target in bodies.values():
        preflight(service.port, target, body, content_type)
        preflight(echo.port, target, body, content_type)
    secs = ctx.args.duration
    results: dict[tuple[str, int, str], LoadStats] = {}
    for run in range(ctx.repeat):
        for conns in (1, 8):
            for form, (body, content_type, target) in bodies.items():
                for who, proc in (("echo", echo), ("service", service)):
                    log(f"small {form} {conns} conn, {who}: run {run + 1}/{ctx.repeat}")
                    point = load_point(proc.port, target, body, content_type, conns, secs)
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
