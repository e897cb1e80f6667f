"""Prometheus metrics: requests, latency, tensor bytes, and the store's layer count.

With several worker processes, each writes its samples to files in ``PROMETHEUS_MULTIPROC_DIR``
(``spatial-dropout serve`` sets one up when ``--workers`` > 1) and a scrape, answered by any
one worker, adds up all of them. With one process they stay in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.errors import ServiceError
from service.store import LayerStore

MEDIA_TYPE: Final = CONTENT_TYPE_LATEST
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds; small requests answer in well under a millisecond, big tensors take seconds.
LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
)  # fmt: skip
#: Methods get a label of their own; any other verb is counted as "other" (bounded labels).
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """The service's metrics, in a registry of their own (each app has one, tests make many)."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "spatial_dropout_http_requests",
            "HTTP requests answered, by route template (not raw path) and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "spatial_dropout_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tensor_bytes = Counter(
            "spatial_dropout_tensor_bytes",
            "Bytes of tensors run through layers (/apply, /v2 infer): direction in or out.",
            ["route", "direction"],
            registry=self.registry,
        )
        self.grpc_requests = Counter(
            "spatial_dropout_grpc_requests",
            "gRPC calls answered, by method (ModelInfer, ...) and status code (OK, NOT_FOUND...).",
            ["method", "code"],
            registry=self.registry,
        )
        self.grpc_latency = Histogram(
            "spatial_dropout_grpc_request_duration_seconds",
            "Time from a gRPC call's arrival to its answer.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # The labelled children, by (method, route, status): labels() costs more than inc().
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._grpc_children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._tensor_children: dict[str, tuple[Counter, Counter]] = {}
        self.in_progress = Gauge(
            "spatial_dropout_http_requests_in_progress",
            "HTTP requests being served now.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )

    def observe(
        self,
        method: str,
        route: str,
        status: int,
        seconds: float,
        tensor_bytes_in: int = 0,
        tensor_bytes_out: int = 0,
    ) -> None:
        method = method if method in _METHODS else "other"  # a client may invent any verb
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if tensor_bytes_in or tensor_bytes_out:
            self._count_tensors(route, tensor_bytes_in, tensor_bytes_out)

    def observe_grpc(
        self,
        method: str,
        code: str,
        seconds: float,
        tensor_bytes_in: int = 0,
        tensor_bytes_out: int = 0,
    ) -> None:
        """Count one gRPC call (method names come from the server's own table: bounded)."""
        key = (method, code)
        children = self._grpc_children.get(key)
        if children is None:
            children = (self.grpc_requests.labels(method, code), self.grpc_latency.labels(method))
            self._grpc_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if tensor_bytes_in or tensor_bytes_out:
            self._count_tensors(f"grpc:{method}", tensor_bytes_in, tensor_bytes_out)

    def _count_tensors(self, route: str, tensor_bytes_in: int, tensor_bytes_out: int) -> None:
        children = self._tensor_children.get(route)
        if children is None:
            children = (
                self.tensor_bytes.labels(route, "in"),
                self.tensor_bytes.labels(route, "out"),
            )
            self._tensor_children[route] = children
        children[0].inc(tensor_bytes_in)
        children[1].inc(tensor_bytes_out)

    def render(self, store: LayerStore) -> bytes:
        """The exposition text: every process's samples, and the store read now."""
        if self.multiprocess:
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            text = generate_latest(merged)
        else:
            text = generate_latest(self.registry)
        at_scrape = CollectorRegistry(auto_describe=False)
        at_scrape.register(StoreCollector(store))
        return text + generate_latest(at_scrape)

    def close(self) -> None:
        """This worker stops: drop its share of the in-progress gauge from the shared files."""
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


class StoreCollector(Collector):
    """``spatial_dropout_layers`` read from the store at scrape time, and whether it answered."""

    def __init__(self, store: LayerStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "spatial_dropout_store_up", "1 if the layer store answered this scrape, else 0."
        )
        try:
            count = self.store.count()
        except ServiceError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily(
            "spatial_dropout_layers", "Layers in the store (shared by all replicas).", value=count
        )
