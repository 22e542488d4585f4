"""stage=batch: score many images offline with any registered version (batch.model, default the env's
@champion), every image answered as the online endpoint answers it. Where it runs is the flavour's
business (backends/base.py: BatchScoring): here on every core, or as a job of Azure ML's batch
endpoint on the cluster. The MLflow run names the input by its digest and carries the version's
lineage, so a row in the output can be traced to the data and the training run behind it."""

from __future__ import annotations

import json

from omegaconf import DictConfig

from mnistops import tags as T
from mnistops.errors import MnistopsError
from mnistops.stages import StageResult

LINEAGE_SKIP = (T.CONFIG,)  # the version's whole training config: in its own run, not copied


def lineage_tags(version) -> dict:
    """The version's mnistops.* tags (training run, weights digest, dataset digest, promotion source,
    gate decision ...) as mnistops.lineage.* tags of the batch run, with its URI and run id."""
    out = {f"{T.LINEAGE_PREFIX}{k[len(T.PREFIX):]}": str(v)[:5000] for k, v in version.tags.items()
           if k.startswith(T.PREFIX) and k not in LINEAGE_SKIP}
    out[T.MODEL_URI] = version.uri
    if version.run_id:
        out[f"{T.LINEAGE_PREFIX}version_run_id"] = version.run_id
    return out


def run(cfg: DictConfig) -> StageResult:
    from mnistops import backends

    backend = backends.get(cfg)
    try:
        version = backend.registry().resolve(cfg.batch.model, "batch.model")
    except MnistopsError as err:
        message = str(err)
        raise MnistopsError(message if "batch.model" in message else f"batch.model={cfg.batch.model}: {message}") \
            from None
    outcome = backend.batch.score(version)
    if outcome.previews:  # a dry run: the specs were written, nothing was scored or recorded
        return StageResult("batch", model_uri=version.uri, artifacts={p.rsplit("/", 1)[-1].rsplit(".", 1)[0]: p
                                                                       for p in outcome.previews})
    return record(cfg, version, outcome)


def record(cfg: DictConfig, version, outcome) -> StageResult:
    import mlflow

    from mnistops import tracking

    rate = outcome.images / outcome.seconds if outcome.seconds > 0 else 0.0
    metrics = {"batch/images": float(outcome.images), "batch/seconds": float(outcome.seconds)}
    if rate:
        metrics["batch/images_per_s"] = float(rate)
    if outcome.images:
        metrics.update({f"batch/share_{d}": n / outcome.images for d, n in outcome.digits.items()})
        if outcome.ood is not None:
            metrics["batch/ood_rate"] = outcome.ood / outcome.images
    with tracking.start_run(cfg, "batch") as active:
        tracking.set_tags({T.BATCH_INPUT: str(cfg.batch.input), T.BATCH_INPUT_DIGEST: outcome.input_digest,
                           T.BATCH_OUTPUT: outcome.output, **lineage_tags(version)})
        tracking.log_metrics(metrics)
        mlflow.log_dict({"model": version.uri, "input": str(cfg.batch.input), "input_digest": outcome.input_digest,
                         "output": outcome.output, "images": outcome.images, "digits": outcome.digits,
                         "ood": outcome.ood, "where": outcome.where}, "batch/summary.json")

    speed = f" in {outcome.seconds:.1f} s ({rate:,.0f} images/s)" if rate else ""
    print(f"scored {outcome.images} images with {version.uri}{speed} on {outcome.where}")
    print(f"  -> {outcome.output}")
    print(f"  input sha256 {outcome.input_digest[:16]}…  digits " + json.dumps(outcome.digits, separators=(",", ":"))
          + (f"  not a digit: {outcome.ood}" if outcome.ood is not None else ""))
    print(f"  mlflow run: {active.info.run_id}")
    return StageResult("batch", run_id=active.info.run_id, metrics=metrics, model_uri=version.uri,
                       artifacts={"output": outcome.output})
