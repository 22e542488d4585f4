"""The classification report from labels and predictions (what stage=evaluate logs as its
performance matrix, and what model quality and monitoring judge): accuracy, per-class precision /
recall / F1 / support, macro averages and the confusion matrix (rows: true class, columns: predicted)."""

from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(num_classes * y_true + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> Dict[str, Any]:
    k = len(classes)
    cm = confusion(np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64), k)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(1), cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    return {
        "accuracy": float(tp.sum() / max(1, cm.sum())),
        "macro_precision": float(precision.mean()), "macro_recall": float(recall.mean()), "macro_f1": float(f1.mean()),
        "per_class": [{"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for c, p, r, f, s in zip(classes, precision, recall, f1, support)],
        "confusion_matrix": cm.tolist(), "classes": list(classes),
    }
