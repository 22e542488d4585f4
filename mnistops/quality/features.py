"""Per-image features of a batch of digit images: one table row per image, computed with vectorised
numpy (60k MNIST images in about a second), for data-quality validation and for drift monitoring.

The function never trusts its input to be what the contract says (``uint8``, shape ``(N, 28, 28)``):
it also takes float batches (NaNs, values outside 0..255) and images of another shape, and records
what it saw in the structural columns, so that a broken batch *fails a check with a readable reason*
instead of crashing the code that inspects it.

Columns (pixel values are read on the 0..255 scale as given; nothing is rescaled or guessed, so a
float batch in 0..1 shows up as nearly black images with ``max_intensity <= 1``):

=================  ===========================================================================
``mean_intensity`` mean pixel value / 255 (0..1 for valid data)
``ink_coverage``   fraction of pixels that are *ink*: value > ``INK_THRESHOLD`` (127.5, i.e. half
                   of full scale; MNIST strokes are anti-aliased, so this keeps the stroke core
                   and drops the grey rim)
``bbox_top``       first row holding ink (0-based); ``bbox_left`` likewise for columns
``bbox_height``    rows spanned by ink (bottom - top + 1); ``bbox_width`` likewise; all four are 0
                   for an image without ink
``centroid_row``   intensity-weighted centre of mass (0-based pixel coordinates; negative and NaN
                   pixels weigh 0); ``centroid_col`` likewise; the geometric centre if no intensity
``stroke_width``   mean length of the horizontal runs of ink pixels (ink pixels / number of runs),
                   a cheap estimate of pen width in pixels; 0 without ink
``max_intensity``  largest raw pixel value (NaNs ignored; NaN only if every pixel is NaN)
``min_intensity``  smallest raw pixel value (likewise)
``height``         image height: the first per-image dimension (``shape[1]``)
``width``          image width: the product of the remaining per-image dimensions, so an
                   ``(N, 28, 28, 1)`` batch is 28 x 28 but its ``image_ndim`` is 3
``image_ndim``     number of per-image dimensions (2 for a proper batch)
``has_nan``        whether any pixel is NaN (always False for integer dtypes)
``dtype``          the numpy dtype of the batch, as a string ("uint8")
=================  ===========================================================================
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import pandas as pd

INK_THRESHOLD = 127.5
"""A pixel is ink when its value (0..255 scale) is above this."""

CHUNK = 8192
"""Images processed at once: bounds the float temporaries to ~25 MB for 28x28 images."""

FEATURE_COLUMNS = (
    "mean_intensity", "ink_coverage", "bbox_top", "bbox_left", "bbox_height", "bbox_width",
    "centroid_row", "centroid_col", "stroke_width", "max_intensity", "min_intensity",
)
"""The numeric per-image statistics (the columns a drift monitor compares)."""

STRUCTURE_COLUMNS = ("height", "width", "image_ndim", "has_nan", "dtype")


def as_image_grid(images) -> Tuple[np.ndarray, int]:
    """View any array as ``(N, H, W)`` plus the number of per-image dimensions it really had.

    ``(N, H, W, ...)`` folds the trailing dimensions into W; ``(N, P)`` becomes ``(N, 1, P)``;
    a single value or a 1-D vector becomes one row. Nothing is copied when not needed.
    """
    arr = np.asarray(images)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    image_ndim = arr.ndim - 1
    n = arr.shape[0]
    if arr.ndim == 1:  # one flat image
        return arr.reshape(1, 1, n), 1
    h = arr.shape[1]
    w = int(np.prod(arr.shape[2:], dtype=np.int64)) if arr.ndim > 2 else arr.shape[1]
    if arr.ndim == 2:
        h = 1
    return arr.reshape(n, h, w), image_ndim


def image_features(images) -> pd.DataFrame:
    """One row of features per image of ``images`` (see the module docstring for the columns).

    ``images`` is an array ``(N, H, W)`` or a sequence of 2-D images; a sequence whose images differ
    in shape or dtype gets one row per image all the same, each with its own shape and dtype.
    """
    if isinstance(images, (list, tuple)) and images:
        parts = [np.asarray(im) for im in images]
        keys = [(p.shape, p.dtype.str) for p in parts]
        if len(set(keys)) > 1:  # ragged: features per group of equal shape and dtype, in order
            order = {}
            for i, k in enumerate(keys):
                order.setdefault(k, []).append(i)
            frames = []
            for k, idx in order.items():
                f = _features(np.stack([parts[i] for i in idx]))
                f.index = idx
                frames.append(f)
            return pd.concat(frames).sort_index()
        return _features(np.stack(parts))
    return _features(images)


def _features(images) -> pd.DataFrame:
    grid, image_ndim = as_image_grid(images)
    n, h, w = grid.shape
    is_float = grid.dtype.kind == "f"
    is_numeric = grid.dtype.kind in "biuf"
    if not is_numeric:  # strings, objects, bools: make them numbers, or NaN where they are not
        grid = pd.DataFrame(grid.reshape(n, -1)).apply(pd.to_numeric, errors="coerce").to_numpy(
            dtype=np.float64).reshape(n, h, w)
        is_float = True
    cols = {name: np.empty(n, dtype=np.float64) for name in FEATURE_COLUMNS}
    has_nan = np.zeros(n, dtype=bool)
    rows = np.arange(h, dtype=np.float64)
    cols_idx = np.arange(w, dtype=np.float64)
    npix = max(h * w, 1)
    for start in range(0, n, CHUNK):
        sl = slice(start, min(start + CHUNK, n))
        x = grid[sl]
        if is_float:
            nan = np.isnan(x)
            has_nan[sl] = nan.any(axis=(1, 2)) if x.size else False
            xf = np.where(nan, 0.0, x).astype(np.float64, copy=False)
            with np.errstate(all="ignore"):
                if x.size:
                    maxi = np.where(nan, -np.inf, x).max(axis=(1, 2))
                    mini = np.where(nan, np.inf, x).min(axis=(1, 2))
                    all_nan = nan.all(axis=(1, 2))
                    maxi = np.where(all_nan, np.nan, maxi)
                    mini = np.where(all_nan, np.nan, mini)
                else:
                    maxi = mini = np.full(x.shape[0], np.nan)
        else:
            xf = x.astype(np.float32)
            if x.size:
                maxi, mini = x.max(axis=(1, 2)), x.min(axis=(1, 2))
            else:
                maxi = mini = np.full(x.shape[0], np.nan)
        cols["max_intensity"][sl] = maxi
        cols["min_intensity"][sl] = mini
        with np.errstate(all="ignore"):
            total = xf.sum(axis=(1, 2), dtype=np.float64)
            cols["mean_intensity"][sl] = total / (npix * 255.0)
            ink = xf > INK_THRESHOLD
            ink_count = ink.sum(axis=(1, 2))
            cols["ink_coverage"][sl] = ink_count / npix
            # bounding box of ink
            any_row, any_col = ink.any(axis=2), ink.any(axis=1)
            has_ink = ink_count > 0
            top = np.argmax(any_row, axis=1)
            bottom = h - 1 - np.argmax(any_row[:, ::-1], axis=1)
            left = np.argmax(any_col, axis=1)
            right = w - 1 - np.argmax(any_col[:, ::-1], axis=1)
            cols["bbox_top"][sl] = np.where(has_ink, top, 0)
            cols["bbox_left"][sl] = np.where(has_ink, left, 0)
            cols["bbox_height"][sl] = np.where(has_ink, bottom - top + 1, 0)
            cols["bbox_width"][sl] = np.where(has_ink, right - left + 1, 0)
            # intensity-weighted centroid (negative pixels weigh nothing)
            wgt = np.clip(xf, 0.0, None)
            mass = wgt.sum(axis=(1, 2), dtype=np.float64)
            safe = np.where(mass > 0, mass, 1.0)
            crow = (wgt.sum(axis=2, dtype=np.float64) @ rows) / safe
            ccol = (wgt.sum(axis=1, dtype=np.float64) @ cols_idx) / safe
            cols["centroid_row"][sl] = np.where(mass > 0, crow, (h - 1) / 2.0)
            cols["centroid_col"][sl] = np.where(mass > 0, ccol, (w - 1) / 2.0)
            # stroke width: ink pixels per horizontal run of ink (a run starts where the left
            # neighbour is not ink)
            starts = ink.copy()
            starts[:, :, 1:] &= ~ink[:, :, :-1]
            runs = starts.sum(axis=(1, 2))
            cols["stroke_width"][sl] = np.where(runs > 0, ink_count / np.maximum(runs, 1), 0.0)
    frame = pd.DataFrame(cols)
    frame["height"] = np.full(n, h if image_ndim >= 2 else 1, dtype=np.int64)
    frame["width"] = np.full(n, w, dtype=np.int64)
    frame["image_ndim"] = np.full(n, image_ndim, dtype=np.int64)
    frame["has_nan"] = has_nan
    frame["dtype"] = np.asarray(images).dtype.name
    return frame
