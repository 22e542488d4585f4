"""Calibrated probabilities and the "not a digit" threshold, fitted on the validation split.

Label smoothing (the default recipe's 0.1) trains a network to answer ~0.9 where it is nearly always
right, so its raw softmax is no chance of being right. Temperature scaling (Guo et al., ICML 2017)
divides the logits by one number T fitted on held-out data: the argmax (and so accuracy) is
unchanged, the probabilities become calibrated. The OOD threshold is the validation score above
which only ``rate`` of the digits fall. Both travel in the exported graph (``models/export.py``);
``mnistops.serving.protocol.read_outputs`` applies them. numpy only: fitting needs no torch.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from mnistops.serving.protocol import Calibration, ood_score, softmax


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / T)."""
    logp = _log_softmax(np.asarray(logits, np.float64) / float(temperature))
    return float(-logp[np.arange(len(labels)), np.asarray(labels, np.int64)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, iters: int = 50) -> float:
    """The T minimising validation NLL of softmax(logits / T).

    The NLL is convex in beta = 1/T (a log-sum-exp of a linear function minus a linear term), so
    Newton's method on beta converges in a few steps from beta = 1, with a step-halving guard."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64)
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise ValueError(f"fit_temperature needs logits (N, K) and N labels, got {z.shape} and {y.shape}")
    zy = z[np.arange(len(y)), y]
    beta = 1.0

    def loss(b: float) -> float:
        return nll(z, y, 1.0 / b)

    current = loss(beta)
    for _ in range(iters):
        p = np.exp(_log_softmax(beta * z))
        mean_z = (p * z).sum(axis=1)
        grad = float((mean_z - zy).mean())  # d NLL / d beta
        hess = float(((p * z * z).sum(axis=1) - mean_z**2).mean())  # variance of z under p, >= 0
        step = grad / hess if hess > 1e-12 else grad
        nxt = beta - step
        while nxt <= 1e-3 or loss(nxt) > current:  # keep beta positive and the loss going down
            step /= 2
            nxt = beta - step
            if abs(step) < 1e-10:
                return 1.0 / beta
        beta, previous, current = nxt, current, loss(nxt)
        if previous - current < 1e-10:
            break
    return float(1.0 / beta)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> Dict[str, np.ndarray]:
    """Per confidence bin (equal width over [0, 1]): images, mean confidence, accuracy."""
    probs = np.asarray(probs, np.float64)
    conf = probs.max(axis=1)
    right = (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    safe = np.maximum(count, 1)
    return {"edges": np.linspace(0.0, 1.0, bins + 1), "count": count,
            "confidence": np.bincount(which, conf, bins) / safe, "accuracy": np.bincount(which, right, bins) / safe}


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: the image-weighted gap between confidence and accuracy per bin."""
    r = reliability(probs, labels, bins)
    total = r["count"].sum()
    return float((r["count"] * np.abs(r["confidence"] - r["accuracy"])).sum() / max(total, 1.0))


def ood_threshold(scores: np.ndarray, rate: float) -> float:
    """The score above which at most ``rate`` of these (in-distribution) scores lie."""
    scores = np.asarray(scores, np.float64)
    if not 0.0 < rate < 1.0:
        raise ValueError(f"the OOD rate must be in (0, 1), got {rate}")
    return float(np.quantile(scores, 1.0 - rate, method="higher"))


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Chance that an out-of-distribution image scores higher than a digit (ties count half)."""
    a = np.asarray(in_scores, np.float64)
    b = np.asarray(out_scores, np.float64)
    both = np.concatenate([a, b])
    order = both.argsort(kind="mergesort")
    ranks = np.empty(len(both), np.float64)
    ranks[order] = np.arange(1, len(both) + 1)
    # average ranks over ties
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, ranks)
    ranks = (sums / counts)[inverse]
    u = ranks[len(a):].sum() - len(b) * (len(b) + 1) / 2.0
    return float(u / (len(a) * len(b)))


def calibrate(logits: np.ndarray, labels: np.ndarray, ood_method: str = "mahalanobis", ood_rate: float = 0.008,
              embeddings: Optional[np.ndarray] = None, fit_embeddings: Optional[np.ndarray] = None,
              fit_labels: Optional[np.ndarray] = None, shrinkage: float = 0.01,
              bins: int = 15) -> Tuple[Calibration, Dict[str, float], Optional[Dict[str, np.ndarray]]]:
    """Fit the temperature and the OOD threshold on validation ``logits`` (raw) and ``labels``.

    ``mahalanobis`` also needs the validation ``embeddings`` and, to fit the class means and
    covariance on other images than those the threshold is chosen on, ``fit_embeddings`` /
    ``fit_labels`` (training images). Returns the ``protocol.Calibration`` the export bakes into
    the graph, the validation measurements (metric name -> value) and the OOD head
    (``means``, ``transform``; None for the logit-based methods)."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    temperature = fit_temperature(logits, labels)
    scaled = (logits / temperature).astype(np.float32)  # what the exported graph outputs
    head = None
    if ood_method == "mahalanobis":
        if embeddings is None or fit_embeddings is None or fit_labels is None:
            raise ValueError("ood_method=mahalanobis needs validation embeddings and training embeddings with labels")
        means, transform = fit_mahalanobis(fit_embeddings, fit_labels, logits.shape[1], shrinkage)
        head = {"means": means, "transform": transform}
        scores = mahalanobis(embeddings, means, transform).astype(np.float32)
    else:
        scores = ood_score(scaled, ood_method)
    threshold = ood_threshold(scores, ood_rate)
    calibration = Calibration(temperature, ood_method, threshold)
    report = {
        "calibration/temperature": temperature,
        "calibration/val_nll_before": nll(logits, labels), "calibration/val_nll_after": nll(logits, labels, temperature),
        "calibration/val_ece_before": ece(softmax(logits), labels, bins),
        "calibration/val_ece_after": ece(softmax(scaled.astype(np.float64)), labels, bins),
        "ood/threshold": threshold, "ood/val_flagged": float((scores > np.float32(threshold)).mean()),
    }
    return calibration, report, head


def fit_mahalanobis(embeddings: np.ndarray, labels: np.ndarray, num_classes: int = 10,
                    shrinkage: float = 0.05) -> Tuple[np.ndarray, np.ndarray]:
    """Class means and a whitening transform W (precision = W W^T) of the penultimate-layer
    embedding: the class-conditional Gaussians with one shared covariance of Lee et al. (NeurIPS
    2018). The covariance is shrunk towards its mean variance (``shrinkage``) so that dimensions
    that never vary (a linear model's border pixels) stay finite."""
    e = np.asarray(embeddings, np.float64).reshape(len(embeddings), -1)
    y = np.asarray(labels, np.int64)
    means = np.stack([e[y == k].mean(axis=0) if np.any(y == k) else e.mean(axis=0) for k in range(num_classes)])
    centred = e - means[y]
    cov = centred.T @ centred / max(len(e) - 1, 1)
    dim = cov.shape[0]
    cov = (1.0 - shrinkage) * cov + shrinkage * (np.trace(cov) / dim) * np.eye(dim)
    values, vectors = np.linalg.eigh(cov)
    transform = vectors / np.sqrt(np.maximum(values, 1e-12))  # W: W W^T = cov^-1
    return means, transform


def mahalanobis(embeddings: np.ndarray, means: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance to the nearest class mean, per embedding dimension (the
    graph's ``ood_score`` for ood_method=mahalanobis, ``models/export.py`` computes the same)."""
    z = np.asarray(embeddings, np.float64).reshape(len(embeddings), -1) @ transform
    centers = means @ transform
    d = (z * z).sum(axis=1, keepdims=True) - 2.0 * z @ centers.T + (centers * centers).sum(axis=1)
    return np.maximum(d.min(axis=1), 0.0) / transform.shape[1]
