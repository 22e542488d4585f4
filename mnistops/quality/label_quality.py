"""Are a batch's labels right? Confident learning (cleanlab) on a model's probabilities.

The class-mean consistency check of the suite (table.py) is model-free and cheap, but it agrees with
clean MNIST labels only ~82 % of the time, so it cannot see less than ~30 % wrong labels. A good
model that has never seen the batch can: confident learning (Northcutt et al., JAIR 2021;
``cleanlab.filter.find_label_issues``) estimates per class how confident the model is on images
that really carry a label, and calls a row a *suspect* where the model is confidently sure of
another class. The suspects' share is the estimated noise rate.

Two rules refuse a batch:

- the estimated share of wrong labels exceeds ``max_noise`` (``quality.max_label_noise``);
- one confusion is systematic: more than ``max_class_noise`` of the images that look like class
  j carry one other label i (at least ``SYSTEMATIC_MIN_ROWS`` of them) — half the 4s labelled 9 is
  only ~5 % of a batch, but half of the 4s.

numpy here; cleanlab is imported when a batch is assessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

SYSTEMATIC_MIN_ROWS = 5
"""A confusion counts as systematic only with at least this many suspects (no verdict on 2 images)."""
GRID_LIMIT = 64
"""Suspects shown in the image grid, most likely wrong first."""


@dataclass
class Confusion:
    likely: int  # the class the image looks like (the model's best class other than the label)
    labelled: int  # the label it carries
    rows: int  # suspects with this pair
    share: float  # rows / images that look like `likely`

    def words(self, classes: Sequence[str]) -> str:
        return f"{classes[self.likely]} labelled {classes[self.labelled]}"


@dataclass
class LabelQuality:
    """What confident learning says about one labelled batch."""

    n: int
    noise_rate: float  # estimated share of wrong labels = suspects / n
    suspects: np.ndarray  # row indices, most likely wrong first
    given: np.ndarray  # for each suspect, its label
    suggested: np.ndarray  # for each suspect, the class the model prefers
    confusions: List[Confusion]  # most frequent first
    max_noise: float
    max_class_noise: float
    classes: List[str]
    reasons: List[str] = field(default_factory=list)  # why refused; empty: passed
    source: str = ""  # the batch, in words
    model: str = ""  # whose probabilities

    @property
    def passed(self) -> bool:
        return not self.reasons

    def confusion_words(self, limit: int = 5) -> str:
        return ", ".join(f"{c.words(self.classes)} ({c.rows})" for c in self.confusions[:limit]) or "none"

    def summary(self, dropped: bool = False) -> str:
        """In words; `dropped`: the suspects were dropped (quality.label_issues=drop) instead of failing."""
        verdict = "PASSED" if self.passed else "SUSPECTS DROPPED" if dropped else "FAILED"
        head = (f"label quality {verdict}: {self.source} ({self.n} labelled images), "
                f"checked with {self.model}: estimated {self.noise_rate:.1%} wrong labels "
                f"({len(self.suspects)} suspects; quality.max_label_noise {self.max_noise:.1%})")
        lines = [head, f"  most likely confusions: {self.confusion_words()}"]
        lines += [f"  {'would fail' if dropped else 'FAILED'}: {r}" for r in self.reasons]
        if len(self.suspects):
            shown = ", ".join(f"{int(r)} ({self.classes[int(s)]}?)" for r, s in zip(self.suspects[:10], self.suggested[:10]))
            lines.append(f"  suspect rows (row: likely class): {shown}" + (" …" if len(self.suspects) > 10 else ""))
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        return {"source": self.source, "model": self.model, "n": self.n, "noise_rate": self.noise_rate,
                "passed": self.passed, "reasons": self.reasons, "max_label_noise": self.max_noise,
                "max_class_noise": self.max_class_noise,
                "confusions": [{"likely": self.classes[c.likely], "labelled": self.classes[c.labelled],
                                "rows": c.rows, "share_of_likely_class": c.share} for c in self.confusions],
                "suspects": [{"row": int(r), "labelled": self.classes[int(g)], "likely": self.classes[int(s)]}
                             for r, g, s in zip(self.suspects, self.given, self.suggested)]}

    def write(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))
        return Path(path)


def assess(labels, probabilities, *, max_noise: float = 0.05, max_class_noise: float = 0.1,
           classes: Optional[Sequence[str]] = None, source: str = "batch", model: str = "") -> LabelQuality:
    """Confident learning on `labels` (N,) given a model's `probabilities` (N, K) for the same rows.

    The model must not have been trained on these rows: in-sample probabilities echo the labels.
    """
    labels = np.asarray(labels).astype(np.int64).ravel()
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probabilities must be (N, K) for N={len(labels)} labels, got {probs.shape}")
    k = probs.shape[1]
    classes = [str(c) for c in (classes if classes is not None else range(k))]
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must be 0..{k - 1}")
    probs = probs / np.clip(probs.sum(axis=1, keepdims=True), 1e-12, None)
    suspects = _find_issues(labels, probs, k)
    other = probs.copy()
    other[np.arange(len(labels)), labels] = -1.0
    suggested = other.argmax(axis=1)[suspects] if len(suspects) else np.zeros(0, np.int64)
    confusions = _confusions(labels[suspects], suggested, probs.argmax(axis=1), k)
    n = len(labels)
    rate = len(suspects) / n if n else 0.0
    reasons = []
    if rate > max_noise:
        reasons.append(f"estimated {rate:.1%} wrong labels > quality.max_label_noise {max_noise:.1%} "
                       f"(most likely: {', '.join(c.words(classes) for c in confusions[:3])})")
    for c in confusions:
        if c.rows >= SYSTEMATIC_MIN_ROWS and c.share > max_class_noise:
            reasons.append(f"systematic confusion: {c.rows} images that look like {classes[c.likely]} "
                           f"({c.share:.0%} of them) are labelled {classes[c.labelled]} "
                           f"> quality.max_class_noise {max_class_noise:.0%}")
    return LabelQuality(n=n, noise_rate=rate, suspects=suspects, given=labels[suspects], suggested=suggested,
                        confusions=confusions,
                        max_noise=max_noise, max_class_noise=max_class_noise, classes=classes, reasons=reasons,
                        source=source, model=model)


def _find_issues(labels: np.ndarray, probs: np.ndarray, k: int) -> np.ndarray:
    """Row indices of likely label errors, most likely first (cleanlab's prune-by-noise-rate filter,
    ranked by self-confidence). cleanlab needs every class among the labels: a batch missing some
    is assessed on the classes it has (its columns renormalised), then mapped back."""
    if len(labels) == 0:
        return np.zeros(0, np.int64)
    from cleanlab.filter import find_label_issues

    present = np.unique(labels)
    if len(present) < 2:
        return np.zeros(0, np.int64)  # one class: nothing to be confused with inside the batch
    if len(present) < k:
        remap = np.full(k, -1)
        remap[present] = np.arange(len(present))
        sub = probs[:, present]
        sub = sub / np.clip(sub.sum(axis=1, keepdims=True), 1e-12, None)
        labels, probs = remap[labels], sub
    ranked = find_label_issues(labels, probs, filter_by="prune_by_noise_rate",
                               return_indices_ranked_by="self_confidence", n_jobs=1)
    return np.asarray(ranked, dtype=np.int64)


def _confusions(given: np.ndarray, likely: np.ndarray, predicted: np.ndarray, k: int) -> List[Confusion]:
    looks = np.bincount(predicted, minlength=k)
    pairs: Dict[tuple, int] = {}
    for g, lk in zip(given.tolist(), likely.tolist()):
        pairs[(lk, g)] = pairs.get((lk, g), 0) + 1
    out = [Confusion(likely=lk, labelled=g, rows=r, share=r / max(1, int(looks[lk])))
           for (lk, g), r in pairs.items()]
    return sorted(out, key=lambda c: (-c.rows, c.likely, c.labelled))


def suspect_grid(images: np.ndarray, quality: LabelQuality, path: Path, limit: int = GRID_LIMIT) -> Optional[Path]:
    """The suspects as an image grid titled 'row 17: 9→4?' (label → likely class); None without suspects."""
    from mnistops.plots import image_grid

    if not len(quality.suspects):
        return None
    rows = quality.suspects[:limit]
    imgs = np.asarray(images)[rows]
    if imgs.ndim == 2:
        imgs = imgs.reshape(len(imgs), 28, 28)
    names = quality.classes
    titles = [f"#{int(r)}: {names[int(g)]}→{names[int(s)]}?"
              for r, g, s in zip(rows, quality.given[:limit], quality.suggested[:limit])]
    shown = f"{len(rows)} of {len(quality.suspects)}" if len(quality.suspects) > limit else str(len(rows))
    return image_grid(imgs, path, titles=titles,
                      title=f"label suspects in {quality.source}: {shown} (label → likely class), "
                            f"est. {quality.noise_rate:.1%} wrong")


def kept(n: int, quality: LabelQuality) -> np.ndarray:
    """Boolean mask of the rows `quality.label_issues=drop` keeps (every row but the suspects)."""
    keep = np.ones(n, dtype=bool)
    keep[quality.suspects] = False
    return keep


def model_probabilities(model_dir: Path, images: np.ndarray) -> np.ndarray:
    """A registered version's class probabilities for uint8 images (N, 28, 28), as its pyfunc answers
    them: the answer the endpoint, score.py and batch scoring give (calibrated where the version
    carries a calibration)."""
    import mlflow

    out = mlflow.pyfunc.load_model(str(model_dir)).predict(np.asarray(images))
    return np.asarray(out["probabilities"].tolist(), dtype=np.float64)
