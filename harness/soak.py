"""The soak workload: N clients for S seconds of mixed creates, applies, infers and exports.

``python -m bench.soak`` runs it long against a server of its own and judges memory;
tests/hostile/test_soak.py runs it briefly and judges only the answers.

Every request checks its answer (status, and the body where it is cheap to), so an "error" is
anything a correct server would not have said, or a connection it dropped.
"""

from __future__ import annotations

import io
import itertools
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import numpy as np

from harness.process import rss_bytes

MAX_SECONDS: Final = 600
MAX_CLIENTS: Final = 64
#: Relative frequency of each kind of request in the mix.
MIX: Final = {"create": 2, "apply_json": 3, "apply_npy": 3, "infer_v2": 2, "export": 1}
#: Seeds the exports draw from: a handful, as a user exporting a few models would.
EXPORT_SEEDS: Final = (1, 2, 3, 4)
POOL: Final = 8  # layers made before the soak, shared by the applies and exports
MiB: Final = 1024 * 1024


@dataclass
class Report:
    clients: int
    seconds: float
    warmup: float
    requests: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)
    rss_warm: int = 0
    rss_end: int = 0
    rss_peak: int = 0

    @property
    def growth(self) -> float:
        """RSS growth after warm-up, in percent."""
        return 100.0 * (self.rss_end - self.rss_warm) / self.rss_warm if self.rss_warm else 0.0

    def lines(self) -> list[str]:
        total = sum(self.requests.values())
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.requests.items()))
        return [
            f"soak: {self.clients} clients, {self.seconds:.0f} s ({self.warmup:.0f} s warm-up)",
            f"requests: {total} ({total / self.seconds:.0f}/s): {kinds}",
            f"errors: {sum(self.errors.values())}"
            + (f" ({dict(self.errors)}); first: {self.first_errors}" if self.errors else ""),
            f"server RSS: warm-up {self.rss_warm / MiB:.1f} MiB, end {self.rss_end / MiB:.1f} "
            f"MiB, peak {self.rss_peak / MiB:.1f} MiB, growth {self.growth:+.1f}%",
        ]


def _npy(array: np.ndarray[Any, Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


class Client:
    """One soak client: its own connection, its own random stream, a tally of what it did."""

    def __init__(self, url: str, index: int, pool: list[str]) -> None:
        self.http = httpx.Client(base_url=url, timeout=60)
        self.rng = random.Random(index)
        self.index = index
        self.pool = pool
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.first: list[str] = []
        self.mine: list[str] = []  # layers this client made and has not deleted yet
        self.serial = itertools.count()
        self.kinds = [kind for kind, weight in MIX.items() for _ in range(weight)]

    def run(self, until: float) -> None:
        try:
            while time.monotonic() < until:
                kind = self.rng.choice(self.kinds)
                try:
                    problem = getattr(self, kind)()
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                self.requests[kind] += 1
                if problem is not None:
                    self.errors[kind] += 1
                    if len(self.first) < 3:
                        self.first.append(f"{kind}: {problem}"[:300])
        finally:
            self.http.close()

    # -- the kinds of request ------------------------------------------------------------

    def create(self) -> str | None:
        name = f"soak-{self.index}-{next(self.serial)}"
        made = self.http.post("/layers", json={"name": name, "rate": 0.25, "seed": 11})
        if made.status_code != 201 or made.json()["name"] != name:
            return f"{made.status_code} {made.text[:200]}"
        self.mine.append(made.json()["id"])
        if len(self.mine) > 16:  # keep the store's size steady: delete the oldest
            gone = self.http.delete(f"/layers/{self.mine.pop(0)}")
            self.requests["delete"] += 1
            if gone.status_code != 204:
                self.errors["delete"] += 1
                return f"delete {gone.status_code} {gone.text[:200]}"
        return None

    def apply_json(self) -> str | None:
        x = self.rng.choice((1.0, -2.5, 3.0))
        answer = self.http.post(
            "/apply",
            json={
                "layer": self.rng.choice(self.pool),
                "training": True,
                "seed": self.rng.randrange(2**53),
                "input": {"shape": [2, 4, 4, 8], "data": [x] * 256},
                "return_mask": True,
            },
        )
        if answer.status_code != 200:
            return f"{answer.status_code} {answer.text[:200]}"
        data = answer.json()["output"]["data"]
        if len(data) != 256 or not set(data) <= {0.0, 2 * x}:  # rate 0.5: kept values double
            return f"wrong output {data[:8]}"
        return None

    def apply_npy(self) -> str | None:
        x = np.ones((4, 16, 16, 8), dtype=np.float32)
        answer = self.http.post(
            "/apply",
            content=_npy(x),
            headers={"content-type": "application/x-npy"},
            params={"layer": self.rng.choice(self.pool), "training": "true", "seed": 5},
        )
        if answer.status_code != 200:
            return f"{answer.status_code} {answer.text[:200]}"
        out = np.load(io.BytesIO(answer.content))
        if out.shape != x.shape or not set(np.unique(out).tolist()) <= {0.0, 2.0}:
            return f"wrong output shape {out.shape}"
        return None

    def infer_v2(self) -> str | None:
        request = {
            "id": str(self.index),
            "parameters": {"training": True, "seed": self.rng.randrange(2**31)},
            "inputs": [
                {"name": "x", "shape": [1, 2, 2, 4], "datatype": "FP32", "data": [1.0] * 16}
            ],
        }
        answer = self.http.post(f"/v2/models/{self.rng.choice(self.pool)}/infer", json=request)
        if answer.status_code != 200 or answer.json()["id"] != str(self.index):
            return f"{answer.status_code} {answer.text[:200]}"
        return None

    def export(self) -> str | None:
        layer = self.rng.choice(self.pool)
        answer = self.http.get(
            f"/layers/{layer}/onnx", params={"seed": self.rng.choice(EXPORT_SEEDS)}
        )
        if answer.status_code != 200 or not answer.content:
            return f"{answer.status_code} {answer.text[:200]}"
        return None


def run_soak(url: str, pid: int, *, clients: int, seconds: float, warmup: float) -> Report:
    """Drive the server at ``url`` (process ``pid``, on this machine) and report."""
    if not url.startswith(("http://127.0.0.1:", "http://localhost:")):
        raise ValueError("the soak only targets loopback")
    clients = min(clients, MAX_CLIENTS)
    seconds = min(seconds, MAX_SECONDS)
    report = Report(clients, seconds, warmup)
    with httpx.Client(base_url=url, timeout=60) as setup:
        pool = []
        for n in range(POOL):
            made = setup.post(
                "/layers", json={"name": f"soak-pool-{n}-{time.time_ns()}", "rate": 0.5, "seed": n}
            )
            made.raise_for_status()
            pool.append(made.json()["name"])
    workers = [Client(url, i, pool) for i in range(clients)]
    start = time.monotonic()
    until = start + seconds
    threads = [threading.Thread(target=w.run, args=(until,), daemon=True) for w in workers]
    for thread in threads:
        thread.start()

    # Sample the server's memory each second; the warm-up value is the one at its end.
    report.rss_peak = rss_bytes(pid)
    warm_at = start + warmup
    while any(thread.is_alive() for thread in threads):
        time.sleep(min(1.0, max(0.01, until - time.monotonic())))
        now_rss = rss_bytes(pid)
        report.rss_peak = max(report.rss_peak, now_rss)
        if not report.rss_warm and time.monotonic() >= warm_at:
            report.rss_warm = now_rss
    for thread in threads:
        thread.join()
    report.rss_end = rss_bytes(pid)
    report.rss_warm = report.rss_warm or report.rss_end
    for w in workers:
        report.requests.update(w.requests)
        report.errors.update(w.errors)
        report.first_errors += w.first[: max(0, 3 - len(report.first_errors))]
    return report
