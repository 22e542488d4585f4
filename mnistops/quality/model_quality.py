"""Model quality of a registered version, measured on the official test set by scoring the version's
own registered artifact (not by trusting its run's metrics): accuracy and per-class recall."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from omegaconf import DictConfig


def measure(cfg: DictConfig, model_dir: Path, model_uri: str) -> Dict[str, Any]:
    """`model_dir`: the version's MLflow model directory on this machine (its registry's download)."""
    import mlflow

    from mnistops.data import catalog

    test = catalog.load(cfg, "test")
    predicted = mlflow.pyfunc.load_model(str(model_dir)).predict(test.images)["digit"].to_numpy()
    return quality_of(model_uri, test.labels, predicted, list(cfg.data.classes))


def quality_of(model_uri: str, labels, predicted, classes) -> Dict[str, Any]:
    """The quality dict the gate compares, from true and predicted labels."""
    from mnistops.classification_report import classification_report

    report = classification_report(labels, predicted, classes)
    return {"model_uri": model_uri, "accuracy": report["accuracy"], "n": int(len(labels)),
            "recall": {row["class"]: row["recall"] for row in report["per_class"]},
            "precision": {row["class"]: row["precision"] for row in report["per_class"]}}


def compare(candidate: Dict[str, Any], champion: Dict[str, Any] | None, gate: DictConfig) -> list[str]:
    """The reasons to refuse the candidate (empty: approve)."""
    if champion is None:
        if candidate["accuracy"] < gate.min_accuracy:
            return [f"accuracy {candidate['accuracy']:.4f} < gate.min_accuracy {gate.min_accuracy} (first champion)"]
        return []
    reasons = []
    if candidate["accuracy"] < champion["accuracy"] - gate.tolerance:
        reasons.append(f"accuracy {candidate['accuracy']:.4f} < champion {champion['accuracy']:.4f} "
                       f"- gate.tolerance {gate.tolerance}")
    for cls, recall in champion["recall"].items():
        if candidate["recall"][cls] < recall - gate.class_tolerance:
            reasons.append(f"class {cls} recall {candidate['recall'][cls]:.4f} < champion {recall:.4f} "
                           f"- gate.class_tolerance {gate.class_tolerance}")
    return reasons


def summary_metrics(prefix: str, quality: Dict[str, Any]) -> Dict[str, float]:
    out = {f"{prefix}/accuracy": float(quality["accuracy"])}
    out.update({f"{prefix}/recall_{c}": float(v) for c, v in quality["recall"].items()})
    return out
