"""Drift: the reference a window is compared with, and the distances that compare them.

The reference is a sample of *training* images seen through the monitored model: their image
features, their embeddings projected on the first principal components (fitted on the reference
itself), and the share of each class the model predicts on them. It depends only on the model
version, the dataset and the sample, so the caller builds it once and caches it (save/load below).

Distances, as Azure ML model monitoring / Evidently define them:

* numeric columns: Wasserstein-1 distance divided by the reference standard deviation (floored at
  1e-3, Evidently's ``wasserstein`` stattest), i.e. how far the distribution moved in reference
  standard deviations; 0 = identical; threshold 0.1 by default.
* predicted classes: Jensen-Shannon *distance* (square root of the divergence, base 2), 0..1.

Both are biased upwards on small windows: a window of 500 images drawn from the training
distribution itself is 0.05 reference stds away in Wasserstein on average and 0.09 at its 95th
percentile, so at a 0.1 threshold one clean 500-image window in six would alert on some feature,
and at 100 images nearly all would. The monitor therefore reports a *lower confidence bound*:
the raw distance minus the ``noise_quantile`` (95 %) of the distance that windows of the same size
drawn from the reference itself show (bootstrap, :func:`noise_floor`; scaled by
``sqrt(1 + n/m)`` for the reference's own sampling error). Both distances are metrics, so by the
triangle inequality the true distance between production and reference is at least that, with
~95 % confidence. Large windows have a floor near 0 (the raw distance is kept); the raw distance
and the floor are in each signal's note.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import pandas as pd

from mnistops.atomic import write_atomic
from mnistops.errors import MnistopsError

DRIFT_FEATURES = ("mean_intensity", "ink_coverage", "bbox_top", "bbox_left", "bbox_height",
                  "bbox_width", "centroid_row", "centroid_col", "stroke_width")
"""Image features compared for data drift (``max_intensity`` / ``min_intensity`` are range checks,
near-constant on MNIST: the data-quality signal watches them)."""

MIN_STD = 1e-3
NUM_CLASSES = 10
REFERENCE_FORMAT = 2
"""Bumped whenever the saved reference changes shape (2: the labelled hold-out the accuracy
estimator is fitted on); the cache key carries it, so a format change rebuilds."""


def normalised_wasserstein(reference, current, min_std: float = MIN_STD) -> float:
    """Wasserstein-1 distance of two samples in units of the reference std (floored at ``min_std``)."""
    from scipy.stats import wasserstein_distance

    ref = np.asarray(reference, dtype=np.float64).ravel()
    cur = np.asarray(current, dtype=np.float64).ravel()
    if not len(ref) or not len(cur):
        return float("nan")
    return float(wasserstein_distance(ref, cur) / max(float(np.std(ref)), min_std))


def column_drift(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """:func:`normalised_wasserstein` of each column of two (rows, columns) arrays."""
    reference, current = np.asarray(reference), np.asarray(current)
    return np.array([normalised_wasserstein(reference[:, j], current[:, j]) for j in range(reference.shape[1])])


def noise_floor(reference: np.ndarray, n: int, quantile: float = 0.95, draws: int = 200,
                seed: int = 0) -> np.ndarray:
    """Per column of ``reference`` (m, k): the ``quantile`` of :func:`normalised_wasserstein`
    between ``n`` values drawn from the column with replacement and the column, times
    ``sqrt(1 + n/m)``. Exact W1 on the shared support from multinomial counts: no sorting per draw."""
    ref = np.asarray(reference, dtype=np.float64)
    m, k = ref.shape
    if n <= 0 or m < 2:
        return np.zeros(k)
    picks = np.random.default_rng(seed).integers(0, m, size=(draws, n)) + m * np.arange(draws)[:, None]
    counts = np.bincount(picks.ravel(), minlength=draws * m).reshape(draws, m)
    ref_cdf = np.arange(1, m) / m
    out = np.empty(k)
    for j in range(k):
        order = np.argsort(ref[:, j], kind="stable")
        gaps = np.diff(ref[order, j])
        cdf = np.cumsum(counts[:, order[:-1]], axis=1) / n
        w = np.abs(cdf - ref_cdf) @ gaps
        out[j] = np.quantile(w, quantile) / max(float(np.std(ref[:, j])), MIN_STD)
    return out * np.sqrt(1.0 + n / m)


def js_noise_floor(p, n: int, m: int, quantile: float = 0.95, draws: int = 200, seed: int = 0) -> float:
    """The ``quantile`` of the JS distance between the class shares of ``n`` draws from ``p`` and
    ``p``, times ``sqrt(1 + n/m)`` (``m``: the reference size ``p`` was measured on)."""
    from scipy.spatial.distance import jensenshannon

    p = np.asarray(p, dtype=np.float64)
    if n <= 0 or p.sum() <= 0:
        return 0.0
    p = p / p.sum()
    counts = np.random.default_rng(seed).multinomial(n, p, size=draws) / n
    d = jensenshannon(np.broadcast_to(p, counts.shape), counts, base=2, axis=1)
    return float(np.quantile(d, quantile) * np.sqrt(1.0 + n / max(m, 1)))


def class_distribution(digits, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Share of each class among predicted digits (zeros for no digits)."""
    d = np.asarray(digits, dtype=np.int64).ravel()
    counts = np.bincount(d[(d >= 0) & (d < num_classes)], minlength=num_classes).astype(np.float64)
    return counts / counts.sum() if counts.sum() else counts


def js_distance(p, q) -> float:
    """Jensen-Shannon distance (base 2, 0..1) of two class distributions (or counts); NaN if one is empty."""
    from scipy.spatial.distance import jensenshannon

    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    return float(jensenshannon(p, q, base=2))


def fit_pca(embeddings: np.ndarray, k: int):
    """(mean (D,), components (k', D)) of the embeddings by numpy SVD; k' = min(k, N, D)."""
    x = np.asarray(embeddings, dtype=np.float64)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[: max(1, min(int(k), vt.shape[0]))]


@dataclass
class Reference:
    """What a window is compared with (see the module docstring)."""

    features: pd.DataFrame  # DRIFT_FEATURES, one row per reference image
    pca_mean: np.ndarray  # (D,)
    pca_components: np.ndarray  # (k, D), orthonormal rows
    projected: np.ndarray  # (N, k) reference embeddings on the components
    class_distribution: np.ndarray  # (10,) share the model predicts of each class on the reference
    meta: Dict[str, Any] = field(default_factory=dict)  # model version, n_images, seed, ...
    # a labelled hold-out (the `val` split) through the same model: what the accuracy estimator of
    # the estimated_performance signal is fitted on; None: that signal is not computed
    holdout_probabilities: Optional[np.ndarray] = None  # (M, 10) float32
    holdout_labels: Optional[np.ndarray] = None  # (M,) int64
    _floors: Dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def floors(self, n: int, quantile: float = 0.95):
        """(features (F,), components (k,), predicted classes) noise floors for a window of ``n``
        images (computed once per ``n``; deterministic)."""
        key = (int(n), float(quantile))
        if key not in self._floors:
            self._floors[key] = (noise_floor(self.features.to_numpy(np.float64), n, quantile),
                                 noise_floor(self.projected, n, quantile),
                                 js_noise_floor(self.class_distribution, n, self.n_images, quantile))
        return self._floors[key]

    def estimator(self, method: str):
        """The :class:`~mnistops.monitoring.estimate.AccuracyEstimator` fitted on the hold-out (None without one)."""
        from mnistops.monitoring.estimate import fit_or_none

        key = ("estimator", method)
        if key not in self._floors:
            self._floors[key] = fit_or_none(self.holdout_probabilities, self.holdout_labels, method)
        return self._floors[key]

    @property
    def n_images(self) -> int:
        return int(len(self.features))

    @property
    def components(self) -> int:
        return int(len(self.pca_components))

    def project(self, embedding: np.ndarray) -> np.ndarray:
        """Embeddings (N, D) -> coordinates (N, k) on the reference components."""
        e = np.asarray(embedding, dtype=np.float64)
        if e.ndim != 2 or e.shape[1] != self.pca_mean.shape[0]:
            raise MnistopsError(f"embedding of width {e.shape[1:]} does not match the reference's "
                                f"{self.pca_mean.shape[0]}: was the reference built with another model?")
        return (e - self.pca_mean) @ self.pca_components.T


def build_reference(images: np.ndarray, embedder, components: int, *, size: Optional[int] = None,
                    seed: int = 0, meta: Optional[Dict[str, Any]] = None, holdout=None) -> Reference:
    """The reference from (training) images: a seeded sample of ``size`` of them (all if None),
    seen through ``embedder`` (an :class:`~mnistops.monitoring.embedding.Embedder`); ``holdout``
    ``(images, labels)`` of data the model did not train on, for the accuracy estimator."""
    from mnistops.quality.features import image_features

    images = np.asarray(images)
    if size is not None and len(images) > size:
        images = images[np.sort(np.random.default_rng(seed).choice(len(images), int(size), replace=False))]
    if len(images) < 2:
        raise MnistopsError(f"a drift reference needs at least 2 images, got {len(images)}")
    probs, emb = embedder(images)
    mean, comps = fit_pca(emb, components)
    ref = Reference(features=image_features(images)[list(DRIFT_FEATURES)].reset_index(drop=True),
                    pca_mean=mean, pca_components=comps, projected=np.zeros((0, len(comps))),
                    class_distribution=class_distribution(probs.argmax(axis=1)),
                    meta={"n_images": int(len(images)), "seed": int(seed), "components": int(len(comps)),
                          "model_name": getattr(embedder, "model_name", None),
                          "model_version": getattr(embedder, "version", None), **(meta or {})})
    ref.projected = ref.project(emb)
    if holdout is not None:
        h_images, h_labels = holdout
        ref.holdout_probabilities = embedder(np.asarray(h_images))[0].astype(np.float32)
        ref.holdout_labels = np.asarray(h_labels, dtype=np.int64)
        ref.meta["holdout_images"] = int(len(h_labels))
    return ref


def save_reference(ref: Reference, path) -> Path:
    """Write ``ref`` as one .npz (arrays + JSON meta), atomically."""
    buf = io.BytesIO()
    np.savez(buf, features=ref.features.to_numpy(np.float64),
             feature_columns=np.array([str(c) for c in ref.features.columns], dtype=str),
             pca_mean=ref.pca_mean, pca_components=ref.pca_components, projected=ref.projected,
             class_distribution=ref.class_distribution,
             **({} if ref.holdout_labels is None else {"holdout_probabilities": ref.holdout_probabilities,
                                                         "holdout_labels": ref.holdout_labels}),
             meta=np.array(json.dumps({"format": REFERENCE_FORMAT, **ref.meta}, default=str)))
    return write_atomic(path, buf.getvalue())


class ReferenceFormatError(MnistopsError):
    """A reference file written in another format: the cache rebuilds it."""


def load_reference(path) -> Reference:
    """Read a file from :func:`save_reference`; a missing or foreign file is a MnistopsError naming it."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != REFERENCE_FORMAT:
                raise ReferenceFormatError(f"drift reference {path} has format {meta.get('format')}, "
                                    f"expected {REFERENCE_FORMAT}: rebuild it")
            meta.pop("format")
            held = "holdout_labels" in z.files
            return Reference(features=pd.DataFrame(z["features"], columns=[str(c) for c in z["feature_columns"]]),
                             pca_mean=z["pca_mean"], pca_components=z["pca_components"],
                             projected=z["projected"], class_distribution=z["class_distribution"], meta=meta,
                             holdout_probabilities=z["holdout_probabilities"] if held else None,
                             holdout_labels=z["holdout_labels"] if held else None)
    except FileNotFoundError:
        raise MnistopsError(f"drift reference {path} does not exist") from None
    except (OSError, KeyError, ValueError) as exc:
        raise MnistopsError(f"drift reference {path} is not readable: {exc}") from None
