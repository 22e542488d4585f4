"""stage=baseline: the data-quality baseline (a Great Expectations suite derived from the reference
training data, versioned by dataset digest) and the model-quality baseline (the champion's
accuracy and per-class recall on the official test set), kept in the env's tracking store as the
baseline run's artifacts (quality/baselines.py), where later pipelines on any machine find them."""

from __future__ import annotations

import json

from omegaconf import DictConfig

from mnistops import tags as T
from mnistops.stages import StageResult


def run(cfg: DictConfig) -> StageResult:
    import mlflow

    from mnistops import backends, layout, tracking
    from mnistops.data import catalog, mirrors
    from mnistops.errors import MnistopsError
    from mnistops.quality import baselines, build_suite, model_quality, save_suite, validate_batch

    train, test = catalog.load(cfg, "train"), catalog.load(cfg, "test")
    train_x, train_y, test_x, test_y = train.images, train.labels, test.images, test.labels
    digest = mirrors.digest(cfg)
    suite, _stats = build_suite(train_x, train_y, name=f"{cfg.data.name}-{digest}", dataset_digest=digest,
                                quantiles=tuple(cfg.baseline.quantiles), class_tolerance=cfg.baseline.class_tolerance)
    version = baselines.suite_version(suite)
    registry = backends.get(cfg).registry()
    champion = None
    try:
        champion = registry.resolve(cfg.baseline.model, "baseline.model")
    except MnistopsError:
        pass

    with tracking.start_run(cfg, "baseline") as active:
        out = tracking.output_dir(cfg, "baseline")
        path = save_suite(suite, out / "suite.json")
        # the suite must accept the official test set, or it would fail clean production data
        check = validate_batch(suite, test_x, test_y, data_docs_dir=out / "data_docs")
        if not check.success:
            raise MnistopsError(f"the new suite {version} rejects the official test set:\n{check.summary()}")
        (out / "test_set_validation.json").write_text(json.dumps(check.raw, indent=2, default=str))
        mlflow.log_artifact(str(out / "test_set_validation.json"), "quality")
        if check.data_docs_index:
            mlflow.log_artifacts(str(check.data_docs_index.parent), "quality/data_docs")
        tracking.set_tags({T.SUITE_VERSION: version, T.DATASET_DIGEST: digest})
        metrics = {"baseline/expectations": float(check.statistics.get("evaluated_expectations", 0))}
        if champion is not None:
            quality = model_quality.measure(cfg, registry.download(champion, layout.models_cache(cfg)),
                                            champion.uri)
            mlflow.log_dict({**quality, "version": champion.version}, baselines.MODEL_BASELINE_ARTIFACT)
            metrics.update(model_quality.summary_metrics("baseline", quality))
        tracking.log_metrics(metrics)
        # last: a run holding the suite is the one later stages trust, so it must be complete
        mlflow.log_artifact(str(path), "quality")

    print(f"data-quality baseline {version}: {len(suite.expectations)} expectations from "
          f"{len(train_x)} reference images -> run {active.info.run_id} ({baselines.SUITE_ARTIFACT})")
    print(f"  official test set: {check.statistics.get('successful_expectations')}/"
          f"{check.statistics.get('evaluated_expectations')} expectations met; Data Docs: {check.data_docs_index}")
    if champion is not None:
        print(f"model-quality baseline: {champion.uri} accuracy {quality['accuracy']:.4f}, "
              f"lowest class recall {min(quality['recall'].values()):.4f}")
    else:
        print(f"model-quality baseline: no {cfg.baseline.model} yet (the gate will pick the first champion)")
    return StageResult("baseline", run_id=active.info.run_id, metrics=metrics, artifacts={"suite": str(path)})
