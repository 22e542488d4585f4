"""A window of collected traffic: what the monitoring store's reader hands to the signal computation.

Two granularities, because the signals need both: per *image* (the sampled, scored inputs with the
answer the endpoint gave and, where ``/feedback`` arrived, the ground truth) for drift, data
quality and model performance; per *request* (every scoring request, sampled or not, refused or
not) for system metrics and the malformed rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence

import numpy as np
import pandas as pd

REQUEST_COLUMNS = ("time", "route", "status", "latency_ms", "deployment", "version", "n_images")
"""Columns of :attr:`Window.requests` (time: epoch seconds; deployment '' when none was picked)."""

NO_LABEL = -1
"""``Window.labels`` value of an image without feedback."""

OUTCOMES_UNSEEN = "outcomes_unseen"
"""``Window.meta`` key: why the requests' outcomes (status, latency) are not what was collected
(Azure's collector sees answered images only: latency and errors are Azure Monitor metrics there);
the system signals and the malformed rate then say "not computed" with this reason."""


@dataclass
class Window:
    """Collected traffic between ``start`` and ``end`` (epoch seconds); N images, R requests."""

    start: float
    end: float
    images: np.ndarray  # uint8 (N, 28, 28): the sampled, scored images
    digits: np.ndarray  # int (N,) predicted digit per image
    probabilities: np.ndarray  # float32 (N, 10)
    request_ids: np.ndarray  # str (N,) the request each image came from
    deployments: np.ndarray  # str (N,)
    versions: np.ndarray  # str (N,) model version that answered
    labels: np.ndarray  # int (N,) ground truth from /feedback, -1 where none
    requests: pd.DataFrame  # one row per scoring request: REQUEST_COLUMNS
    meta: Dict[str, Any] = field(default_factory=dict)  # free-form: endpoint, env, store path, ...
    ood: Optional[np.ndarray] = None  # bool (N,) the endpoint's "not a digit" flag; None: not collected
    embedding: Optional[np.ndarray] = None  # (N, D) the monitored model's embedding of `images`;
    # set by evaluate_window when it runs the model, so the report need not run it again

    @property
    def n_images(self) -> int:
        return int(len(self.images))

    @property
    def n_labelled(self) -> int:
        return int(np.count_nonzero(np.asarray(self.labels) >= 0))

    @property
    def seconds(self) -> float:
        """The time the window covers (at least the span of its requests, at least 1 ms)."""
        span = float(self.end) - float(self.start)
        if span <= 0 and len(self.requests):
            t = self.requests["time"].to_numpy(dtype=np.float64)
            span = float(t.max() - t.min())
        return max(span, 1e-3)

    def served_version(self) -> Optional[str]:
        """The model version that answered most sampled images (None for an empty window)."""
        if not len(self.versions):
            return None
        values, counts = np.unique(np.asarray(self.versions, dtype=str), return_counts=True)
        return str(values[int(np.argmax(counts))])


def requests_frame(time: Sequence[float], status: Sequence[int], latency_ms: Sequence[float], *,
                   deployment: Any = "blue", version: Any = "1", route: Any = "/score",
                   n_images: Any = 1) -> pd.DataFrame:
    """A requests table from columns (scalars broadcast), with the dtypes the reader gives."""
    n = len(time)

    def col(v, dtype):
        return np.asarray(v, dtype=dtype) if np.ndim(v) else np.full(n, v, dtype=dtype)

    return pd.DataFrame({
        "time": col(time, np.float64), "route": col(route, object), "status": col(status, np.int64),
        "latency_ms": col(latency_ms, np.float64), "deployment": col(deployment, object),
        "version": col(version, object), "n_images": col(n_images, np.int64)})


def make_window(images: np.ndarray, probabilities: np.ndarray, *, labels: Optional[np.ndarray] = None,
                deployments: Any = "blue", versions: Any = "1", requests: Optional[pd.DataFrame] = None,
                start: float = 0.0, end: Optional[float] = None, latency_ms: Any = 10.0,
                meta: Optional[Dict[str, Any]] = None, ood: Optional[np.ndarray] = None) -> Window:
    """A Window built in memory from arrays (tests, benchmarks, the traffic simulator).

    One request per image unless ``requests`` is given: request ``i`` carries image ``i``, answered
    200 at ``start + i * (end - start) / N`` with ``latency_ms`` (scalar or per image). ``labels``
    defaults to no feedback; ``deployments`` / ``versions`` are a scalar or one per image.
    """
    images = np.asarray(images)
    probabilities = np.asarray(probabilities, dtype=np.float32)
    n = len(images)
    if probabilities.ndim != 2 or len(probabilities) != n:
        raise ValueError(f"probabilities must be (N, classes) with N={n}, got {probabilities.shape}")
    end = float(start + max(n, 1)) if end is None else float(end)
    deps = np.asarray(deployments, dtype=str) if np.ndim(deployments) else np.full(n, str(deployments))
    vers = np.asarray(versions, dtype=str) if np.ndim(versions) else np.full(n, str(versions))
    ids = np.array([f"req-{i}" for i in range(n)], dtype=str)
    if requests is None:
        t = start + np.arange(n) * (end - start) / max(n, 1)
        requests = requests_frame(t, np.full(n, 200), latency_ms, deployment=deps, version=vers)
    lab = np.full(n, NO_LABEL, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    return Window(start=float(start), end=end, images=images, digits=probabilities.argmax(axis=1),
                  probabilities=probabilities, request_ids=ids, deployments=deps, versions=vers,
                  labels=lab, requests=requests, meta=dict(meta or {}),
                  ood=None if ood is None else np.asarray(ood, dtype=bool))
