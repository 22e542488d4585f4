"""Synthetic production shifts applied to real images: what the traffic simulator and the detection
benchmark feed the monitor, to check that each kind of change is seen by some signal.

``severity`` runs from 0 (the images unchanged) to 1 (the strong version below); values in between
scale the change continuously:

=============  ==================================================================================
``none``       nothing (severity ignored)
``rotate``     each image rotated about its centre by an angle drawn uniformly from
               ±[22.5°, 45°] x severity (random sign): a scanner or phone held askew
``noise``      additive gaussian pixel noise of std 80 x severity grey levels, clipped to 0..255:
               a noisy sensor or a low-light photo
``blur``       gaussian blur of std 2 x severity pixels: an out-of-focus capture
``invert``     a share ``severity`` of the images inverted (255 - x): white ink on black paper
``thick``      strokes dilated by 2 x severity pixels (grey dilation, 3x3 cross, fractional steps
               blended): a thicker pen
``imbalance``  the batch resampled (same size) so that a share ``severity`` of it comes from 3
               random classes and the rest keeps the input's class mix: one kind of document
               suddenly dominates
=============  ==================================================================================
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

SHIFTS = ("none", "rotate", "noise", "blur", "invert", "thick", "imbalance")
MAX_ANGLE = 45.0
NOISE_STD = 80.0
BLUR_SIGMA = 2.0
DILATION_PX = 2.0
FAVOURED_CLASSES = 3


def apply_shift(images: np.ndarray, labels: np.ndarray, shift: str, severity: float,
                rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 28, 28), labels (N,))`` shifted by ``shift`` at ``severity`` in [0, 1].

    The inputs are not modified; only ``imbalance`` changes which images (and labels) come out.
    """
    if shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}: use one of {', '.join(SHIFTS)}")
    if not 0.0 <= float(severity) <= 1.0:
        raise ValueError(f"shift severity must be in [0, 1], got {severity}")
    images, labels = np.asarray(images), np.asarray(labels)
    s = float(severity)
    if shift == "none" or s == 0.0 or not len(images):
        return images.copy(), labels.copy()
    if shift == "imbalance":
        return _imbalance(images, labels, s, rng)
    x = images.astype(np.float32)
    out = {"rotate": _rotate, "noise": _noise, "blur": _blur, "invert": _invert, "thick": _thick}[shift](x, s, rng)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), labels.copy()


def _rotate(x: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    angles = rng.uniform(0.5, 1.0, len(x)) * MAX_ANGLE * s * rng.choice([-1.0, 1.0], len(x))
    return np.stack([ndimage.rotate(im, a, reshape=False, order=1, mode="constant", cval=0.0)
                     for im, a in zip(x, angles)])


def _noise(x: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0.0, NOISE_STD * s, x.shape).astype(np.float32)


def _blur(x: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(x, sigma=(0.0, BLUR_SIGMA * s, BLUR_SIGMA * s), mode="constant")


def _invert(x: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    flip = rng.random(len(x)) < s
    x[flip] = 255.0 - x[flip]
    return x


def _thick(x: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    cross = np.zeros((1, 3, 3), bool)
    cross[0, 1, :] = cross[0, :, 1] = True
    steps = DILATION_PX * s
    whole, frac = int(steps), steps - int(steps)
    for _ in range(whole):
        x = ndimage.grey_dilation(x, footprint=cross)
    if frac > 0:
        x = (1.0 - frac) * x + frac * ndimage.grey_dilation(x, footprint=cross)
    return x


def _imbalance(images: np.ndarray, labels: np.ndarray, s: float,
               rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    present = np.unique(labels)
    favoured = rng.choice(present, size=min(FAVOURED_CLASSES, len(present)), replace=False)
    n = len(images)
    n_fav = int(round(s * n))
    fav_pool = np.flatnonzero(np.isin(labels, favoured))
    keep = rng.choice(n, size=n - n_fav, replace=False)
    extra = rng.choice(fav_pool, size=n_fav, replace=True)
    idx = rng.permutation(np.concatenate([keep, extra]))
    return images[idx].copy(), labels[idx].copy()
