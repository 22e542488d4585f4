"""stage=evaluate: the performance matrix of a trained model on the official test set: accuracy,
per-class precision / recall / F1, the confusion matrix (PNG + JSON) and a grid of misclassified
images, logged into the train run so the model and its matrix stay together."""

from __future__ import annotations

import json

import numpy as np
from omegaconf import DictConfig

from mnistops.errors import MnistopsError
from mnistops.stages import StageResult


def find_train_run(cfg: DictConfig, run_id):
    from mnistops import tags, tracking

    tracking.configure(cfg)
    run = tracking.get_run(run_id) if run_id else tracking.latest_run(cfg, "train", finished=True)
    if run is None:
        raise MnistopsError(f"no finished train run in env {cfg.env.name!r}: run stage=train first")
    if run.data.tags.get(tags.STAGE) != "train":
        raise MnistopsError(f"run {run.info.run_id} is a {run.data.tags.get(tags.STAGE)!r} run, not a train run")
    return run


def run(cfg: DictConfig) -> StageResult:
    from mlflow.tracking import MlflowClient

    from mnistops import plots, tags, tracking
    from mnistops.data import catalog
    from mnistops.performance import performance_matrix
    from mnistops.models.checkpoint import load_network, predict_proba

    train_run = find_train_run(cfg, cfg.evaluate.run_id)
    run_id = train_run.info.run_id
    test = catalog.load(cfg, "test")
    images, labels = test.images, test.labels
    if cfg.trainer.limit_test_batches is not None:  # a slice, for quick checks; the default is all 10,000
        limit = cfg.trainer.limit_test_batches
        n = int(limit * cfg.data.eval_batch_size) if isinstance(limit, int) else int(limit * len(images))
        images, labels = images[:n], labels[:n]
    proba = predict_proba(load_network(train_run), images, cfg.data.eval_batch_size)
    pred = proba.argmax(1)
    classes = list(cfg.data.classes)
    report = performance_matrix(labels, pred, classes)

    out = tracking.output_dir(cfg, "evaluate")
    cm = np.array(report["confusion_matrix"])
    (out / "performance.json").write_text(json.dumps(report, indent=2))
    (out / "confusion_matrix.json").write_text(json.dumps({"classes": classes, "matrix": cm.tolist()}))
    plots.confusion_matrix(cm, classes, out / "confusion_matrix.png",
                           f"{cfg.data.name} test set: accuracy {report['accuracy']:.4f} (n={len(labels)})")
    wrong = np.flatnonzero(pred != labels)
    worst = wrong[np.argsort(-proba[wrong, pred[wrong]])][: cfg.evaluate.misclassified]
    plots.image_grid(images[worst], out / "misclassified.png",
                     [f"{classes[labels[i]]}→{classes[pred[i]]} {proba[i, pred[i]]:.2f}" for i in worst],
                     f"most confident mistakes ({len(wrong)} of {len(labels)} wrong; true→predicted)")

    metrics = {"test/acc": report["accuracy"], "test/macro_precision": report["macro_precision"],
               "test/macro_recall": report["macro_recall"], "test/macro_f1": report["macro_f1"],
               "test/n": float(len(labels))}
    for row in report["per_class"]:
        for key in ("precision", "recall", "f1"):
            metrics[f"test/{key}_{row['class']}"] = row[key]
    client = MlflowClient()
    for name in ("performance.json", "confusion_matrix.json", "confusion_matrix.png", "misclassified.png"):
        client.log_artifact(run_id, str(out / name), "evaluation")
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k.replace(" ", "_"), float(v), now, 0) for k, v in metrics.items()])
    client.set_tag(run_id, tags.EVALUATED, "true")

    print(f"test accuracy {report['accuracy']:.4f} on {len(labels)} images (run {run_id})")
    print(f"  {'class':>10} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>7}")
    for row in report["per_class"]:
        print(f"  {row['class']:>10} {row['precision']:9.4f} {row['recall']:7.4f} {row['f1']:7.4f} {row['support']:7d}")
    print(f"  confusion matrix: {out / 'confusion_matrix.png'}\n  misclassified: {out / 'misclassified.png'}")
    return StageResult("evaluate", run_id=run_id, metrics=metrics,
                       artifacts={"confusion_matrix": str(out / "confusion_matrix.png"),
                                  "misclassified": str(out / "misclassified.png"),
                                  "performance": str(out / "performance.json")})
