"""stage=validate: check a batch (the dataset's training or test file, or an .npz of images and
optional labels, e.g. collected production inputs) against the env's baseline suite, and the labels
of every labelled batch it is given (the batch and the `data.extra_train` files a CI is about to
train on, e.g. the feedback data a monitor handed over) with the env's champion (label quality,
mnistops/quality/label_quality.py). A failure stops the pipeline with a readable report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from omegaconf import DictConfig

from mnistops import tags as T
from mnistops.errors import MnistopsError
from mnistops.stages import StageResult

LABEL_ISSUES = ("fail", "drop")


@dataclass
class Labelled:
    """One labelled batch whose labels are judged: the validate.batch, or a data.extra_train file."""

    key: str  # "batch" or "extra_train_<i>": names its metrics and artifacts
    source: str  # in words
    images: np.ndarray
    labels: np.ndarray
    in_sample: Optional[str] = None  # why the champion cannot judge it (it learnt these labels)


def load_batch(cfg: DictConfig):
    from mnistops.data import catalog

    source = cfg.validate.batch
    if source in ("train", "test"):
        split = catalog.load(cfg, source)
        return split.images, split.labels
    path = Path(source)
    if not path.is_file():
        raise MnistopsError(f"validate.batch={source!r}: not 'train', 'test' or an existing .npz file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return npz["images"], (npz["labels"] if "labels" in npz.files else None)
    except (KeyError, ValueError, OSError) as err:
        raise MnistopsError(f"validate.batch={source}: not an .npz with an 'images' array ({err})") from err


def check_quality_config(cfg: DictConfig) -> None:
    q = cfg.quality
    if q.label_issues not in LABEL_ISSUES:
        raise MnistopsError(f"quality.label_issues={q.label_issues!r}: expected one of {', '.join(LABEL_ISSUES)}")
    for key in ("max_label_noise", "max_class_noise", "min_model_accuracy"):
        if not 0.0 <= float(q[key]) <= 1.0:
            raise MnistopsError(f"quality.{key}={q[key]}: expected a share between 0 and 1")


def labelled_batches(cfg: DictConfig, images, labels) -> List[Labelled]:
    """What has labels to judge: the batch (when it has labels) and each data.extra_train file."""
    from mnistops.data import catalog

    out = []
    if labels is not None:
        in_sample = None
        if cfg.validate.batch == "train":
            in_sample = ("validate.batch=train is the file the env's models learn from: their "
                         "probabilities on it echo its labels")
        out.append(Labelled("batch", str(cfg.validate.batch), np.asarray(images), np.asarray(labels), in_sample))
    for i, path in enumerate(cfg.data.get("extra_train") or ()):
        extra = catalog.read_extra(str(path))
        out.append(Labelled(f"extra_train_{i}", f"data.extra_train {path}", extra.images, extra.labels))
    return out


def label_judge(cfg: DictConfig):
    """((version, its model dir here), "") of quality.model (the champion), or (None, why not): there
    is none, or it is too weak to tell its own mistakes from wrong labels (its test accuracy, as
    registered, below quality.min_model_accuracy)."""
    from mnistops import backends, layout
    from mnistops.backends import references

    references.parse(cfg.quality.model, "quality.model")  # a malformed reference is the user's error
    registry = backends.get(cfg).registry()
    try:
        version = registry.resolve(cfg.quality.model, "quality.model")
    except MnistopsError:
        return None, f"no {cfg.quality.model} in env {cfg.env.name!r} to judge them"
    accuracy = version.tags.get(T.TEST_ACC)
    floor = float(cfg.quality.min_model_accuracy)
    if accuracy and float(accuracy) < floor:
        return None, (f"{version.uri} (test accuracy {float(accuracy):.1%}) is too weak to judge them "
                      f"(quality.min_model_accuracy {floor:.0%})")
    return (version, registry.download(version, layout.models_cache(cfg))), ""


def judge_labels(cfg: DictConfig, batch: Labelled, judge, out: Path) -> dict:
    """Confident learning on one batch: the report, the suspects' grid and (drop) the kept rows,
    logged to the open run. Returns {quality, verdict, kept_file, metrics}."""
    import mlflow

    from mnistops.quality import label_quality

    version, model_dir = judge
    probs = label_quality.model_probabilities(model_dir, batch.images)
    q = cfg.quality
    quality = label_quality.assess(batch.labels, probs, max_noise=float(q.max_label_noise),
                                   max_class_noise=float(q.max_class_noise), classes=list(cfg.data.classes),
                                   source=batch.source, model=version.uri)
    folder = out / "label_quality" / batch.key
    folder.mkdir(parents=True, exist_ok=True)
    verdict, kept_file = ("passed" if quality.passed else "failed"), None
    report = quality.to_dict()
    if not quality.passed and q.label_issues == "drop":
        keep = label_quality.kept(len(batch.labels), quality)
        kept_file = folder / "kept.npz"
        np.savez_compressed(kept_file, images=batch.images[keep], labels=batch.labels[keep])
        verdict = "dropped"
        report["dropped_rows"] = [int(r) for r in np.sort(quality.suspects)]
        report["kept"] = int(keep.sum())
    (folder / "label_quality.json").write_text(json.dumps(report, indent=2))
    (folder / "label_quality.txt").write_text(quality.summary(dropped=verdict == "dropped") + "\n")
    label_quality.suspect_grid(batch.images, quality, folder / "suspects.png")
    mlflow.log_artifacts(str(folder), f"validation/label_quality/{batch.key}")
    prefix = "validate" if batch.key == "batch" else f"validate/{batch.key}"
    metrics = {f"{prefix}/label_noise": quality.noise_rate, f"{prefix}/label_suspects": float(len(quality.suspects)),
               f"{prefix}/label_quality_passed": float(quality.passed)}
    if verdict == "dropped":
        metrics[f"{prefix}/labels_dropped"] = float(len(quality.suspects))
    return {"quality": quality, "verdict": verdict, "kept_file": kept_file, "metrics": metrics,
            "folder": folder}


def run(cfg: DictConfig) -> StageResult:
    import mlflow

    from mnistops import tracking
    from mnistops.quality import baselines, validate_batch

    check_quality_config(cfg)
    current = baselines.current_suite(cfg)
    images, labels = load_batch(cfg)
    batches = labelled_batches(cfg, images, labels)
    judge, no_judge = label_judge(cfg) if any(b.in_sample is None for b in batches) else (None, "")
    if current is None and judge is None:
        print(f"validate: no baseline suite in env {cfg.env.name!r} yet (stage=baseline makes one) and no "
              f"model to judge labels with{f' ({no_judge})' if no_judge else ''}: nothing to compare")
        return StageResult("validate", metrics={"validate/skipped": 1.0})
    report, judged, notes, unreadable = None, [], [], []
    metrics: Dict[str, float] = {}
    outputs: Dict[str, object] = {}
    with tracking.start_run(cfg, "validate") as active:
        out = tracking.output_dir(cfg, "validate")
        run_tags = {T.BATCH: str(cfg.validate.batch)}
        if current is not None:
            suite, baseline_run = current
            report = validate_batch(suite, images, labels,
                                    data_docs_dir=out / "data_docs" if cfg.validate.data_docs else None)
            (out / "validation.json").write_text(json.dumps(report.raw, indent=2, default=str))
            (out / "validation.txt").write_text(report.summary())
            mlflow.log_artifact(str(out / "validation.json"), "validation")
            mlflow.log_artifact(str(out / "validation.txt"), "validation")
            if report.data_docs_index:
                mlflow.log_artifacts(str(report.data_docs_index.parent), "validation/data_docs")
            stats = report.statistics
            metrics.update({"validate/success": float(report.success),
                            "validate/failed_expectations": float(stats.get("unsuccessful_expectations", 0)),
                            "validate/evaluated_expectations": float(stats.get("evaluated_expectations", 0))})
            run_tags.update({T.SUITE_VERSION: baselines.suite_version(suite), T.BASELINE_RUN_ID: baseline_run,
                             T.VALIDATION: "passed" if report.success else "failed"})
        for batch in batches:
            if batch.in_sample:
                notes.append(f"label quality of {batch.source}: not checked by a model ({batch.in_sample})"
                             + ("; the suite's class-mean check judged them" if current is not None else ""))
            elif judge is None:
                by_suite = current is not None and batch.key == "batch"
                notes.append(f"label quality of {batch.source}: {no_judge}" + (
                    "; only the suite's class-mean consistency check (it sees ~30 % wrong labels and more) "
                    "judged them" if by_suite else ""))
            else:
                try:
                    judged.append((batch, judge_labels(cfg, batch, judge, out)))
                except Exception as err:  # labels not 0..9, images the model cannot read: the suite says which
                    unreadable.append(f"label quality of {batch.source}: not checked: "
                                      f"{(str(err).strip().splitlines() or [type(err).__name__])[0][:300]}")
        notes.extend(unreadable)
        for batch, j in judged:
            metrics.update(j["metrics"])
        verdicts = [j["verdict"] for _, j in judged]
        run_tags[T.LABEL_QUALITY] = ("failed" if "failed" in verdicts else "dropped" if "dropped" in verdicts
                                     else "passed" if verdicts else "not checked")
        if any(v == "failed" for v in verdicts) or unreadable:
            run_tags[T.VALIDATION] = "failed"
        elif T.VALIDATION not in run_tags:
            run_tags[T.VALIDATION] = "passed"
        dropped_extra = {b.key: j["kept_file"] for b, j in judged if j["verdict"] == "dropped" and b.key != "batch"}
        if dropped_extra:  # the steps after this one (train) learn from the kept rows only
            outputs["data.extra_train"] = [str(dropped_extra.get(f"extra_train_{i}", p))
                                           for i, p in enumerate(cfg.data.get("extra_train") or ())]
        tracking.log_metrics(metrics)
        tracking.set_tags(run_tags)
    if report is not None:
        print(report.summary())
    for line in notes:
        print(line)
    for batch, j in judged:
        print(j["quality"].summary(dropped=j["verdict"] == "dropped"))
        print(f"  report: {j['folder'] / 'label_quality.json'}"
              + (f"; suspects: {j['folder'] / 'suspects.png'}" if len(j["quality"].suspects) else ""))
        if j["verdict"] == "dropped":
            print(f"  quality.label_issues=drop: dropped {len(j['quality'].suspects)} suspect rows, "
                  f"{len(batch.labels) - len(j['quality'].suspects)} kept in {j['kept_file']}")
    if report is not None and not report.success:
        raise MnistopsError(f"validation of {cfg.validate.batch} failed against suite "
                            f"{report.suite_version}: {', '.join(report.failed_checks())} "
                            f"(report: {out / 'validation.txt'})")
    if unreadable:
        raise MnistopsError(unreadable[0])
    failed = [(b, j) for b, j in judged if j["verdict"] == "failed"]
    if failed:
        b, j = failed[0]
        raise MnistopsError(f"label quality of {b.source} failed: {'; '.join(j['quality'].reasons)} "
                            f"(report: {j['folder'] / 'label_quality.json'}; quality.label_issues=drop drops "
                            f"the suspects instead)")
    artifacts = {"report": str(out / "validation.txt")} if report is not None else {}
    artifacts.update({f"label_quality_{b.key}": str(j["folder"] / "label_quality.json") for b, j in judged})
    return StageResult("validate", run_id=active.info.run_id, metrics=metrics, artifacts=artifacts, outputs=outputs)
