"""Accuracy estimated without labels: how often the answers of a window are right, before any
ground truth arrives, from the probabilities the endpoint answered.

Every estimator is fitted on a *labelled hold-out* seen through the same model (the drift
reference's ``val`` split, images the model never trained on) and then reads only the window's
probabilities:

=========  ===================================================================================
``atc``    Average Thresholded Confidence (Garg et al., ICLR 2022): a threshold ``t`` on the
           maximum probability, chosen on the hold-out so that the share of images above ``t``
           equals the hold-out accuracy; the estimate is the share of the window above ``t``.
``atc_ne`` the same on the negative entropy of the probabilities (Garg et al.'s preferred score)
``ac``     average confidence: the mean maximum probability (right only if calibrated)
``doc``    difference of confidences: hold-out accuracy - (hold-out mean confidence - window
           mean confidence), i.e. average confidence corrected by its hold-out bias
=========  ===================================================================================

Which one the monitor uses is ``monitor.estimator`` (default chosen by
``benchmarks/estimated_accuracy.py``). Interval: the truth minus the estimate over a window of
``n`` images is a mean of per-image residuals ``correct - score`` whose variance is measured on the
hold-out, plus the hold-out's own sampling error (it fixed the threshold / the bias):
``estimate ± z * sqrt(var(residual) / n + acc (1 - acc) / m)``. It holds on windows like the
hold-out (clean traffic); under a shift it is the sampling part of the error only. The residual
variance is taken at its 97.5 % upper bound (it rests on a few dozen disagreements on a good model,
and the MNIST test writers are not the training writers: measured 0.0064 on the ``val`` hold-out and
0.0090 on the test set for the same model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

METHODS = ("atc", "atc_ne", "ac", "doc")
DEFAULT_METHOD = "atc"
Z95 = 1.959963984540054


def score(probabilities: np.ndarray, method: str) -> np.ndarray:
    """The per-image confidence score each method thresholds or averages (float64)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if method == "atc_ne":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
    return p.max(axis=1)


@dataclass(frozen=True)
class Estimate:
    accuracy: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class AccuracyEstimator:
    """Fitted by :meth:`fit` on a labelled hold-out; :meth:`estimate` reads probabilities only."""

    method: str
    threshold: float  # atc*: the score above which an image counts as right; nan otherwise
    offset: float  # doc: hold-out accuracy - hold-out mean confidence; 0 otherwise
    holdout_accuracy: float
    holdout_size: int
    residual_var: float  # variance of (correct - per-image estimate) on the hold-out, 97.5 % upper bound

    uses_ood: bool = False  # fitted with the hold-out's "not a digit" flags: a flagged image counts as wrong

    @classmethod
    def fit(cls, probabilities: np.ndarray, labels: np.ndarray, method: str = DEFAULT_METHOD,
            ood: Optional[np.ndarray] = None) -> "AccuracyEstimator":
        """``ood``: the hold-out's ``ood`` flags; given, an answer flagged "not a digit" counts as
        wrong (on the hold-out and then on every window, which must then carry its flags too)."""
        if method not in METHODS:
            raise ValueError(f"unknown accuracy estimator {method!r}: use one of {', '.join(METHODS)}")
        p, y = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
        if p.ndim != 2 or len(p) != len(y) or len(y) < 2:
            raise ValueError(f"need (N, classes) probabilities and N labels, N >= 2; got {p.shape} and {y.shape}")
        correct = (p.argmax(axis=1) == y).astype(np.float64)
        acc = float(correct.mean())
        s = _masked(score(p, method), ood, method)
        threshold, offset = float("nan"), 0.0
        if method.startswith("atc"):
            threshold = _atc_threshold(s, acc)
            per_image = (s > threshold).astype(np.float64)
        else:
            if method == "doc":
                offset = acc - float(s.mean())
            per_image = np.clip(s + offset, 0.0, 1.0)
        return cls(method, threshold, offset, acc, int(len(y)), _upper_variance(correct - per_image), ood is not None)

    def per_image(self, probabilities: np.ndarray, ood: Optional[np.ndarray] = None) -> np.ndarray:
        """Each image's estimated chance of being right (0/1 for ATC)."""
        if self.uses_ood and (ood is None or len(ood) != len(probabilities)):
            raise ValueError("this estimator was fitted with ood flags: pass the window's")
        s = _masked(score(probabilities, self.method), ood if self.uses_ood else None, self.method)
        if self.method.startswith("atc"):
            return (s > self.threshold).astype(np.float64)
        return np.clip(s + self.offset, 0.0, 1.0)

    def estimate(self, probabilities: np.ndarray, z: float = Z95, ood: Optional[np.ndarray] = None) -> Estimate:
        """The accuracy of these answers, with a ``z`` interval (see the module docstring)."""
        e = self.per_image(probabilities, ood)
        return self.from_per_image(e, z)

    def from_per_image(self, e: np.ndarray, z: float = Z95) -> Estimate:
        n = int(len(e))
        if n == 0:
            return Estimate(float("nan"), float("nan"), float("nan"), 0)
        a = float(np.mean(e))
        acc = self.holdout_accuracy
        se = math.sqrt(self.residual_var / n + acc * (1.0 - acc) / max(self.holdout_size, 1))
        return Estimate(a, max(0.0, a - z * se), min(1.0, a + z * se), n)

    def describe(self) -> str:
        what = {"atc": f"ATC, max-probability threshold {self.threshold:.4g}",
                "atc_ne": f"ATC, negative-entropy threshold {self.threshold:.4g}",
                "ac": "average confidence", "doc": f"DoC, offset {self.offset:+.4f}"}[self.method]
        return (f"{what}{', not-a-digit answers counted wrong' if self.uses_ood else ''}; fitted on "
                f"{self.holdout_size} held-out images at accuracy {self.holdout_accuracy:.4f}")


def _upper_variance(residuals: np.ndarray) -> float:
    """A 97.5 % upper bound on the per-image residual variance. On a good model the residual is
    non-zero on a few dozen hold-out images only, so its sample variance is itself a small count:
    read it as ``k = m * var`` Poisson events and take the exact Poisson upper bound on ``k``."""
    from scipy.stats import chi2

    m, var = len(residuals), float(np.var(residuals))
    k = m * var
    if k <= 0:
        return 1.0 / m  # no residual at all on the hold-out: as if one image had been wrong
    return float(chi2.ppf(0.975, 2 * k + 2) / 2.0 / m)


def _masked(s: np.ndarray, ood: Optional[np.ndarray], method: str) -> np.ndarray:
    """Scores with the flagged images pushed below every threshold (ATC) or to confidence 0."""
    if ood is None:
        return s
    return np.where(np.asarray(ood, dtype=bool), -np.inf if method.startswith("atc") else 0.0, s)


def _atc_threshold(s: np.ndarray, accuracy: float) -> float:
    """The threshold t with share(s > t) == accuracy as nearly as the sample allows."""
    order = np.sort(s)
    n = len(order)
    k = int(round((1.0 - accuracy) * n))  # this many images at or below t
    if k <= 0:
        return float(np.nextafter(order[0], -np.inf))
    if k >= n:
        return float(order[-1])
    return float(order[k - 1]) if order[k - 1] < order[k] else float(order[k - 1])


def per_class(estimator: AccuracyEstimator, probabilities: np.ndarray, classes: int = 10, z: float = Z95,
              ood: Optional[np.ndarray] = None) -> Tuple[Estimate, ...]:
    """The estimated accuracy among the images predicted as each class (its precision)."""
    p = np.asarray(probabilities)
    pred = p.argmax(axis=1) if len(p) else np.zeros(0, np.int64)
    e = estimator.per_image(p, ood) if len(p) else np.zeros(0)
    return tuple(estimator.from_per_image(e[pred == k], z) for k in range(classes))


def fit_or_none(probabilities: Optional[np.ndarray], labels: Optional[np.ndarray],
                method: str) -> Optional[AccuracyEstimator]:
    """An estimator, or None when there is no labelled hold-out to fit it on."""
    if probabilities is None or labels is None or len(labels) < 2:
        return None
    return AccuracyEstimator.fit(probabilities, labels, method)
