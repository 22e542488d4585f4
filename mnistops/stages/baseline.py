"""stage=baseline: the data-quality baseline (a Great Expectations suite derived from the reference
training data, versioned by dataset digest) and the model-quality baseline (the champion's
accuracy and per-class recall on the official test set), stored in the env and logged to MLflow."""

from __future__ import annotations

import json
import time

from omegaconf import DictConfig

from mnistops.stages import StageResult


def run(cfg: DictConfig) -> StageResult:
    import mlflow

    from mnistops import tracking
    from mnistops.data import mirrors
    from mnistops.data.idx import read_idx
    from mnistops.backends.local import registry
    from mnistops.errors import MnistopsError
    from mnistops.quality import build_suite, save_suite, validate_batch
    from mnistops.quality import model_quality, store

    paths = mirrors.fetch(cfg)
    digest = mirrors.digest(cfg)
    train_x, train_y = read_idx(paths["train_images"]), read_idx(paths["train_labels"])
    test_x, test_y = read_idx(paths["test_images"]), read_idx(paths["test_labels"])
    suite, _stats = build_suite(train_x, train_y, name=f"{cfg.data.name}-{digest}", dataset_digest=digest,
                                quantiles=tuple(cfg.baseline.quantiles), class_tolerance=cfg.baseline.class_tolerance)
    version = suite.meta["mnistops"]["suite_version"]
    path = save_suite(suite, store.suite_path(cfg, version))

    with tracking.start_run(cfg, "baseline") as active:
        out = tracking.output_dir(cfg, "baseline")
        # the suite must accept the official test set, or it would fail clean production data
        check = validate_batch(suite, test_x, test_y, data_docs_dir=out / "data_docs")
        if not check.success:
            raise MnistopsError(f"the new suite {version} rejects the official test set:\n{check.summary()}")
        store.write_json(store.quality_dir(cfg) / "current.json",
                         {"suite": str(path), "version": version, "dataset_digest": digest,
                          "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        mlflow.log_artifact(str(path), "quality")
        (out / "test_set_validation.json").write_text(json.dumps(check.raw, indent=2, default=str))
        mlflow.log_artifact(str(out / "test_set_validation.json"), "quality")
        if check.data_docs_index:
            mlflow.log_artifacts(str(check.data_docs_index.parent), "quality/data_docs")
        mlflow.set_tags({"mnistops.suite_version": version, "mnistops.dataset_digest": digest})
        metrics = {"baseline/expectations": float(check.statistics.get("evaluated_expectations", 0))}

        try:
            champion = registry.resolve(cfg, cfg.baseline.model)
        except MnistopsError:
            champion = None
        if champion is not None:
            quality = model_quality.measure(cfg, champion.uri)
            store.write_json(store.model_baseline_path(cfg), {**quality, "version": champion.version})
            mlflow.log_dict(quality, "quality/model_baseline.json")
            metrics.update(model_quality.summary_metrics("baseline", quality))
        tracking.log_metrics(metrics)

    print(f"data-quality baseline {version}: {len(suite.expectations)} expectations from "
          f"{len(train_x)} reference images -> {path}")
    print(f"  official test set: {check.statistics.get('successful_expectations')}/"
          f"{check.statistics.get('evaluated_expectations')} expectations met; Data Docs: {check.data_docs_index}")
    if champion is not None:
        print(f"model-quality baseline: {champion.uri} accuracy {quality['accuracy']:.4f}, "
              f"lowest class recall {min(quality['recall'].values()):.4f}")
    else:
        print(f"model-quality baseline: no {cfg.baseline.model} yet (the gate will pick the first champion)")
    return StageResult("baseline", run_id=active.info.run_id, metrics=metrics, artifacts={"suite": str(path)})
