"""Prometheus metrics of the endpoint, summed over its worker processes.

Under the supervised server every worker writes its samples to memory-mapped files in
``$PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode, set up by ``supervisor.py``),
and ``GET /metrics``, whichever worker answers it, reads them all: counters and histograms add up
over the workers (and over workers that died and were replaced), the queue-depth gauge sums the
live workers, the topology gauges show the most recent value. Without that variable (an app built
in-process, e.g. by a test) the metrics live in this process's own registry.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("mnistops_requests", "HTTP requests by route template, status and deployment",
                                ["route", "status", "deployment"], registry=r)
        self.errors = Counter("mnistops_errors", "Error answers (status >= 400) by route and status code",
                              ["route", "code"], registry=r)
        self.latency = Histogram("mnistops_request_latency_seconds", "Request latency (server side)",
                                 ["route", "deployment"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("mnistops_batch_size", "Images per inference batch", ["deployment"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.inference = Histogram("mnistops_inference_seconds", "ONNX run time per batch", ["deployment"],
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("mnistops_queue_depth", "Images queued or in inference (all workers)",
                                 ["deployment"], registry=r, multiprocess_mode="livesum")
        self.images = Counter("mnistops_images", "Images scored", ["deployment", "kind"], registry=r)
        self.predictions = Counter("mnistops_predictions", "Predicted digits", ["deployment", "digit"], registry=r)
        self.mirror = Counter("mnistops_mirror_requests", "Mirrored requests by outcome", ["deployment", "outcome"],
                              registry=r)
        self.rejected = Counter("mnistops_rejected", "Requests refused before inference", ["deployment", "reason"],
                                registry=r)
        self.loaded = Gauge("mnistops_deployment_loaded", "1 when the deployment's model is loaded and healthy "
                            "in every live worker", ["deployment"], registry=r, multiprocess_mode="livemin")
        self.traffic = Gauge("mnistops_traffic_percent", "Live traffic share", ["deployment"], registry=r,
                             multiprocess_mode="mostrecent")
        self.mirror_traffic = Gauge("mnistops_mirror_traffic_percent", "Mirror traffic share", ["deployment"],
                                    registry=r, multiprocess_mode="mostrecent")
        self.collected = Counter("mnistops_collector_records", "Data collector records by outcome "
                                 "(written | dropped: queue full | write_failed)", ["outcome"], registry=r)
        self._children = {}
        self._topology_names = {"traffic": set(), "mirror": set(), "loaded": set()}

    def observe_request(self, route: str, status: int, deployment: str, seconds: float) -> None:
        key = (route, status, deployment)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = (self.requests.labels(route, str(status), deployment),
                                           self.latency.labels(route, deployment),
                                           self.errors.labels(route, str(status)) if status >= 400 else None)
        child[0].inc()
        child[1].observe(seconds)
        if child[2] is not None:
            child[2].inc()

    def set_topology(self, traffic: dict, mirror: dict, health: dict) -> None:
        """The current split and health; a deployment that went away reads 0 (in multiprocess mode
        a removed label would keep its last value in the files)."""
        for key, gauge, values in (("traffic", self.traffic, traffic), ("mirror", self.mirror_traffic, mirror),
                                   ("loaded", self.loaded, health)):
            for gone in self._topology_names[key] - set(values):
                gauge.labels(gone).set(0.0)
            for name, value in values.items():
                gauge.labels(name).set(float(value))
            self._topology_names[key] |= set(values)

    def render(self) -> bytes:
        if multiprocess():
            from prometheus_client import multiprocess as mp

            registry = CollectorRegistry()
            mp.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
