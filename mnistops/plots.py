"""Pictures people would rather look at than read: sample grids, class histograms, confusion
matrices. Each function writes one PNG and returns its path. Figures are made without pyplot, so
drawing here needs no display and never switches the backend of a notebook that imported us."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.figure import Figure


def figure(figsize, nrows: int = 1, ncols: int = 1, **subplots_kw):
    """(figure, axes) outside pyplot's global state: nothing to close, nothing leaks between calls."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **subplots_kw)


def image_grid(images: np.ndarray, path: Path, titles: Optional[Sequence[str]] = None, title: str = "") -> Path:
    n = len(images)
    cols = max(1, min(10, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = figure((cols * 1.1, rows * 1.25 + 0.4), rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=255)
            if titles is not None:
                ax.set_title(titles[i], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def class_histogram(train_counts: np.ndarray, test_counts: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    x = np.arange(len(classes))
    fig, ax = figure((8, 4))
    ax.bar(x - 0.2, train_counts, 0.4, label=f"train ({int(train_counts.sum())})")
    ax.bar(x + 0.2, test_counts * (train_counts.sum() / max(1, test_counts.sum())), 0.4,
           label=f"test ({int(test_counts.sum())}, scaled to train)")
    ax.set_xticks(x, classes, rotation=30 if max(len(c) for c in classes) > 2 else 0)
    ax.set_ylabel("images")
    ax.set_title("class distribution")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def confusion_matrix(matrix: np.ndarray, classes: Sequence[str], path: Path, title: str = "") -> Path:
    fig, ax = figure((7, 6))
    ax.imshow(np.log1p(matrix), cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                color="white" if v > matrix.max() / 3 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45 if max(len(c) for c in classes) > 2 else 0)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def reliability_diagram(curves: dict, path: Path, title: str = "") -> Path:
    """Accuracy against confidence per bin, one line per named curve (e.g. before / after
    calibration; each ``models.calibration.reliability()`` plus ``ece``); the diagonal is perfect."""
    fig, (ax, hist) = figure((6, 6.5), 2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="perfectly calibrated")
    for name, r in curves.items():
        used = r["count"] > 0
        centers = r["confidence"][used]
        ax.plot(centers, r["accuracy"][used], marker="o", markersize=4, label=f"{name} (ECE {r['ece']:.4f})")
        hist.bar((r["edges"][:-1] + r["edges"][1:]) / 2, r["count"], width=np.diff(r["edges"]) * 0.9, alpha=0.5,
                 label=name)
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or "reliability diagram")
    hist.set_yscale("log")
    hist.set_xlabel("confidence (top probability)")
    hist.set_ylabel("images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)
