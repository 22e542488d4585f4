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
