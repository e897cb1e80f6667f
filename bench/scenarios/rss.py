"""Peak RSS of a fresh server answering one 128 MiB .npy /apply, against the payload."""

from __future__ import annotations

import time
from pathlib import Path

from bench.client import HttpConn
from bench.common import (
    F32_SHAPES,
    MIB,
    NPY,
    SEED,
    SMALL_SHAPE,
    Context,
    check_npy,
    layer_config,
    log,
    npy_bytes,
    tensor,
)
from bench.procs import LAYER
from bench.stats import Row, Stat, Target, compare
from harness.process import HOST, Child, status_kib
from service.core import kernel
from service.core.config import DataFormat


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > clear_refs``, Linux 4.0+)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return status_kib(pid, "VmHWM") <= status_kib(pid, "VmRSS") + 1024


def run(ctx: Context) -> list[Row]:
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
    server: Child | None = None
    try:
        for run in range(ctx.repeat):
            if server is None:
                log("starting a fresh server for the RSS measurement")
                server = ctx.procs.service()
                with HttpConn(HOST, server.port) as http:  # warm the code paths, not the heap
                    http.request("POST", target, small, {"Content-Type": NPY})
            time.sleep(0.2)
            rss = status_kib(server.pid, "VmRSS")
            resettable = reset_peak(server.pid)
            if not resettable:
                log("cannot reset VmHWM: the peak may include start-up; a fresh server per run")
            with HttpConn(HOST, server.port) as http:
                answer = http.request("POST", target, body, {"Content-Type": NPY})
                peak = status_kib(server.pid, "VmHWM")
                if run == 0:
                    check_npy(answer, expected, "POST /apply (.npy) 128 MiB")
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
            target=Target(1.1, at_least=False),
            show=lambda s: s.show(1 / MIB, "MiB"),
        )
    ]
