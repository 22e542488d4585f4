"""The table a suite validates: one row per image with its features (features.py), and, when labels
are given, the label, one 0/1 column per class and whether the label agrees with the nearest
reference class-mean image (a model-free check that catches shuffled labels). numpy/pandas only."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from mnistops.errors import MnistopsError
from mnistops.quality.features import as_image_grid, image_features

CLASSES = tuple(range(10))


def label_array(labels, n: int) -> np.ndarray:
    """One label per image, as numbers (NaN where a label is not a number)."""
    lab = np.asarray(labels).reshape(-1)
    if lab.shape[0] != n:
        raise MnistopsError(f"labels: {lab.shape[0]} labels for {n} images; give one label per image")
    if lab.dtype.kind not in "biuf":
        lab = pd.to_numeric(pd.Series(lab), errors="coerce").to_numpy(dtype=np.float64)
    return lab


def templates_apply(images, templates: np.ndarray) -> bool:
    """Whether ``images`` are numeric 2-D images of the templates' shape (so they can be compared)."""
    try:
        grid, ndim = as_image_grid(images)
    except ValueError:  # a ragged sequence of images
        return False
    return ndim == 2 and grid.shape[1:] == tuple(templates.shape[1:]) and grid.dtype.kind in "biuf"


def template_matches(images, labels: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """1.0 where the nearest class-mean template (euclidean, pixels / 255) is the given label,
    0.0 where it is another class, NaN for every row when the images are not template-shaped."""
    if not templates_apply(images, templates):
        return np.full(len(labels), np.nan)
    grid, _ = as_image_grid(images)
    n = grid.shape[0]
    flat_t = templates.reshape(len(templates), -1).astype(np.float32)
    bias = 0.5 * (flat_t * flat_t).sum(axis=1)
    out = np.empty(n, dtype=np.float64)
    step = 8192
    for start in range(0, n, step):
        x = grid[start:start + step].reshape(-1, flat_t.shape[1]).astype(np.float32)
        if grid.dtype.kind == "f":
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        guess = np.argmax(x @ (flat_t.T / 255.0) - bias, axis=1)
        out[start:start + step] = guess == labels[start:start + step]
    return out


def batch_table(images, labels=None, templates: Optional[np.ndarray] = None) -> pd.DataFrame:
    """The table a suite validates: image features, plus the label columns when labels are given."""
    table = image_features(images)
    if labels is not None:
        lab = label_array(labels, len(table))
        table["label"] = lab
        for k in CLASSES:
            table[f"label_is_{k}"] = (lab == k).astype(np.int8)
        if templates is not None:
            table["label_matches_template"] = template_matches(images, lab, templates)
    return table
