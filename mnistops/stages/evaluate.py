"""stage=evaluate: the performance matrix of a trained model on the official test set: accuracy,
per-class precision / recall / F1, the confusion matrix (PNG + JSON), a grid of misclassified
images, expected calibration error before and after the fitted temperature with a reliability
diagram, and the share of test digits flagged "not a digit", logged into the train run so the
model and its matrix stay together."""

from __future__ import annotations

import json
import tempfile

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


def calibration_of(train_run):
    """The run's fitted calibration (train stage, tag ``mnistops.calibration``); temperature 1 and
    no OOD threshold for a run trained before calibration existed."""
    import json

    from mnistops import tags
    from mnistops.serving.protocol import Calibration

    raw = train_run.data.tags.get(tags.CALIBRATION)
    try:
        return Calibration.from_metadata(json.loads(raw)) if raw else Calibration()
    except (ValueError, TypeError, AttributeError) as exc:
        raise MnistopsError(f"run {train_run.info.run_id}: tag {tags.CALIBRATION} is not a calibration ({exc})") from None


def ood_head_of(train_run, calibration):
    """The Mahalanobis class means and transform the train stage fitted (artifact
    ``calibration/ood_head.npz``) when the run's ood_method needs them, else None."""
    from mnistops.serving.protocol import GRAPH_SCORED

    if calibration.ood_method not in GRAPH_SCORED:
        return None
    import mlflow

    # into a folder of ours: without dst_path MLflow downloads into a temp dir it never deletes (5 MB a call)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=train_run.info.run_id, dst_path=scratch,
                                                       artifact_path="calibration/ood_head.npz")
        except Exception as err:  # noqa: BLE001 (any store error means the same to the user)
            raise MnistopsError(f"run {train_run.info.run_id} says ood_method={calibration.ood_method} but has no "
                                "calibration/ood_head.npz artifact") from err
        with np.load(path) as npz:
            return {"means": npz["means"], "transform": npz["transform"]}


def run(cfg: DictConfig) -> StageResult:
    from mlflow.tracking import MlflowClient

    from mnistops import plots, tags, tracking
    from mnistops.data import catalog
    from mnistops.classification_report import classification_report
    from mnistops.models.calibration import ece, mahalanobis, reliability
    from mnistops.models.checkpoint import load_network, predict_with_embeddings
    from mnistops.serving.protocol import read_outputs, softmax

    train_run = find_train_run(cfg, cfg.evaluate.run_id)
    run_id = train_run.info.run_id
    test = catalog.load(cfg, "test")
    images, labels = test.images, test.labels
    if cfg.trainer.limit_test_batches is not None:  # a slice, for quick checks; the default is all 10,000
        limit = cfg.trainer.limit_test_batches
        n = int(limit * cfg.data.eval_batch_size) if isinstance(limit, int) else int(limit * len(images))
        images, labels = images[:n], labels[:n]
    logits, embeddings = predict_with_embeddings(load_network(train_run), images, cfg.data.eval_batch_size)
    calibration = calibration_of(train_run)
    head = ood_head_of(train_run, calibration)
    raw = softmax(logits.astype(np.float64))
    outputs = [logits / np.float32(calibration.temperature)]  # what the exported graph outputs
    if head is not None:
        outputs.append(mahalanobis(embeddings, head["means"], head["transform"]))
    scored = read_outputs(outputs, calibration)  # what the endpoint answers
    proba = scored.probabilities
    pred = proba.argmax(1)
    classes = list(cfg.data.classes)
    report = classification_report(labels, pred, classes)

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

    curves = {"uncalibrated": {**reliability(raw, labels), "ece": ece(raw, labels)},
              f"calibrated (T={calibration.temperature:.3f})": {**reliability(proba, labels), "ece": ece(proba, labels)}}
    plots.reliability_diagram(curves, out / "reliability.png", f"{cfg.data.name} test set (n={len(labels)})")
    metrics = {"test/acc": report["accuracy"], "test/macro_precision": report["macro_precision"],
               "test/macro_recall": report["macro_recall"], "test/macro_f1": report["macro_f1"],
               "test/n": float(len(labels)),
               "test/ece_uncalibrated": curves["uncalibrated"]["ece"], "test/ece": ece(proba, labels),
               "test/ood_flagged": float(scored.ood.mean())}
    for row in report["per_class"]:
        for key in ("precision", "recall", "f1"):
            metrics[f"test/{key}_{row['class']}"] = row[key]
    client = MlflowClient()
    for name in ("performance.json", "confusion_matrix.json", "confusion_matrix.png", "misclassified.png",
                 "reliability.png"):
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
    print(f"  calibration: ECE {metrics['test/ece_uncalibrated']:.4f} uncalibrated -> {metrics['test/ece']:.4f} "
          f"(temperature {calibration.temperature:.3f}); not a digit: {metrics['test/ood_flagged']:.2%} of these "
          f"digits flagged ({calibration.ood_method} > {calibration.ood_threshold})")
    print(f"  confusion matrix: {out / 'confusion_matrix.png'}\n  misclassified: {out / 'misclassified.png'}"
          f"\n  reliability diagram: {out / 'reliability.png'}")
    return StageResult("evaluate", run_id=run_id, metrics=metrics,
                       artifacts={"confusion_matrix": str(out / "confusion_matrix.png"),
                                  "misclassified": str(out / "misclassified.png"),
                                  "reliability": str(out / "reliability.png"),
                                  "performance": str(out / "performance.json")})
