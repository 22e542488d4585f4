"""Reference statistics of a clean (training) set: per-feature quantiles, batch-mean spreads, class
shares and class-mean templates, the numbers every expectation is derived from (JSON-serialisable,
kept in the suite's meta). Why each number is what it is: docs/data-quality.md."""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np
import pandas as pd

from mnistops.errors import MnistopsError
from mnistops.quality.features import FEATURE_COLUMNS, INK_THRESHOLD, image_features
from mnistops.quality.table import CLASSES, label_array, template_matches

IMAGE_SHAPE = (28, 28)
DTYPE = "uint8"
_SUMMARY_QUANTILES = (0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999)


def _f(x) -> float:
    return float(round(float(x), 6))


def _block_spread(v: np.ndarray, block: int) -> float:
    """The spread to expect of a batch mean: max(iid standard error, std of contiguous-block means)."""
    se = float(v.std(ddof=1) / np.sqrt(block)) if len(v) > 1 else 0.0
    nblocks = len(v) // block
    if nblocks < 2:
        return se
    means = v[: nblocks * block].reshape(nblocks, block).mean(axis=1)
    return max(se, float(means.std(ddof=1)))


def _feature_stats(col: pd.Series, q: Tuple[float, float], block: int) -> Dict[str, Any]:
    v = col.to_numpy(dtype=np.float64)
    qs = np.quantile(v, _SUMMARY_QUANTILES)
    q_low, q_high = np.quantile(v, q[0], method="lower"), np.quantile(v, q[1], method="higher")
    outside = ((v < q_low) | (v > q_high)).astype(np.float64)
    nblocks = len(v) // block
    worst = float(outside[: nblocks * block].reshape(nblocks, block).mean(axis=1).max()) if nblocks else 0.0
    counts, edges = np.histogram(v, bins=20)
    return {
        "mean": _f(v.mean()), "std": _f(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "min": _f(v.min()), "max": _f(v.max()),
        "q_low": _f(q_low), "q_high": _f(q_high), "batch_spread": _f(_block_spread(v, block)),
        "outside_rate": _f(outside.mean()), "worst_block_outside_rate": _f(worst),
        "quantiles": {str(p): _f(x) for p, x in zip(_SUMMARY_QUANTILES, qs)},
        "histogram": {"edges": [_f(e) for e in edges], "counts": [int(c) for c in counts]},
    }


def reference_statistics(images, labels, *, quantiles=(0.001, 0.999), class_tolerance=0.5,
                         mostly=0.98, batch_z=6.0, min_batch_size=500) -> Dict[str, Any]:
    """JSON-serialisable statistics of a clean reference set (the numbers the suite is built from)."""
    arr = np.asarray(images)
    if arr.ndim != 3 or arr.shape[1:] != IMAGE_SHAPE or arr.dtype != np.uint8 or len(arr) == 0:
        raise MnistopsError(f"reference images must be a non-empty uint8 array of shape (N, 28, 28), "
                            f"got {arr.dtype} {arr.shape}")
    lab = label_array(labels, len(arr))
    present = sorted(int(c) for c in np.unique(lab))
    if present != list(CLASSES):
        raise MnistopsError(f"reference labels must cover exactly the classes 0..9, got {present}")
    lab = lab.astype(np.int64)
    lo, hi = float(quantiles[0]), float(quantiles[1])
    if not 0.0 <= lo < hi <= 1.0:
        raise MnistopsError(f"quantiles must be 0 <= low < high <= 1, got {quantiles}")
    feats = image_features(arr)
    counts = np.bincount(lab, minlength=10)
    templates = np.stack([arr[lab == k].reshape(-1, 784).mean(axis=0, dtype=np.float64) / 255.0
                          for k in CLASSES]).reshape(10, 28, 28)
    templates = np.round(templates, 4)
    matches = template_matches(arr, lab, templates)
    agreement = float(np.mean(matches))
    class_means = {str(k): {c: _f(feats[c].to_numpy()[lab == k].mean()) for c in FEATURE_COLUMNS}
                   for k in CLASSES}
    return {
        "n_images": int(len(arr)),
        "image_shape": list(IMAGE_SHAPE),
        "dtype": DTYPE,
        "ink_threshold": INK_THRESHOLD,
        "settings": {"quantiles": [lo, hi], "class_tolerance": float(class_tolerance),
                     "mostly": float(mostly), "batch_z": float(batch_z),
                     "min_batch_size": int(min_batch_size)},
        "features": {c: _feature_stats(feats[c], (lo, hi), int(min_batch_size)) for c in FEATURE_COLUMNS},
        "classes": {"labels": list(CLASSES), "counts": [int(c) for c in counts],
                    "proportions": [_f(c / counts.sum()) for c in counts],
                    "batch_spread": [_f(_block_spread((lab == k).astype(np.float64), int(min_batch_size)))
                                     for k in CLASSES]},
        "class_feature_means": class_means,
        "templates": {"method": "nearest class-mean image, euclidean on pixels/255",
                      "agreement": _f(agreement),
                      "batch_spread": _f(_block_spread(matches, int(min_batch_size))),
                      "means": templates.reshape(10, -1).tolist()},
    }
