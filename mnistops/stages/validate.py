"""stage=validate: check a batch (the dataset's training or test file, or an .npz of images and
optional labels, e.g. collected production inputs) against the env's baseline suite. A failure
stops the pipeline with a readable report of the expectations that failed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from mnistops import tags as T
from mnistops.errors import MnistopsError
from mnistops.stages import StageResult


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


def run(cfg: DictConfig) -> StageResult:
    import mlflow

    from mnistops import tracking
    from mnistops.quality import baselines, validate_batch

    current = baselines.current_suite(cfg)
    if current is None:
        print(f"validate: no baseline suite in env {cfg.env.name!r} yet (stage=baseline makes one): nothing to compare")
        return StageResult("validate", metrics={"validate/skipped": 1.0})
    suite, baseline_run = current
    images, labels = load_batch(cfg)
    with tracking.start_run(cfg, "validate") as active:
        out = tracking.output_dir(cfg, "validate")
        report = validate_batch(suite, images, labels, data_docs_dir=out / "data_docs" if cfg.validate.data_docs else None)
        (out / "validation.json").write_text(json.dumps(report.raw, indent=2, default=str))
        (out / "validation.txt").write_text(report.summary())
        mlflow.log_artifact(str(out / "validation.json"), "validation")
        mlflow.log_artifact(str(out / "validation.txt"), "validation")
        if report.data_docs_index:
            mlflow.log_artifacts(str(report.data_docs_index.parent), "validation/data_docs")
        stats = report.statistics
        metrics = {"validate/success": float(report.success),
                   "validate/failed_expectations": float(stats.get("unsuccessful_expectations", 0)),
                   "validate/evaluated_expectations": float(stats.get("evaluated_expectations", 0))}
        tracking.log_metrics(metrics)
        tracking.set_tags({T.SUITE_VERSION: baselines.suite_version(suite), T.BASELINE_RUN_ID: baseline_run,
                           T.VALIDATION: "passed" if report.success else "failed", T.BATCH: str(cfg.validate.batch)})
    print(report.summary())
    if not report.success:
        raise MnistopsError(f"validation of {cfg.validate.batch} failed against suite "
                            f"{suite.meta['mnistops']['suite_version']}: {', '.join(report.failed_checks())} "
                            f"(report: {out / 'validation.txt'})")
    return StageResult("validate", run_id=active.info.run_id, metrics=metrics,
                       artifacts={"report": str(out / "validation.txt")})
