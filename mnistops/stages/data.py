"""stage=data: fetch + verify + cache the raw files, then look at them: a sample grid, a class
histogram and summary statistics, logged with the dataset's digest to the env's MLflow store."""

from __future__ import annotations

import json
import logging

import numpy as np
from omegaconf import DictConfig

from mnistops.stages import StageResult

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> StageResult:
    import mlflow

    from mnistops import layout, plots, tags, tracking
    from mnistops.data import catalog

    train, test = catalog.load(cfg, "train"), catalog.load(cfg, "test")
    train_x, train_y, test_x, test_y = train.images, train.labels, test.images, test.labels
    classes = list(cfg.data.classes)
    digest = catalog.digest(cfg)
    train_counts = np.bincount(train_y, minlength=len(classes))
    test_counts = np.bincount(test_y, minlength=len(classes))
    stats = {
        "dataset": cfg.data.name, "digest": digest, "cache": str(layout.data_cache(cfg)),
        "train_images": int(len(train_x)), "test_images": int(len(test_x)), "image_shape": list(train_x.shape[1:]),
        "train_class_counts": train_counts.tolist(), "test_class_counts": test_counts.tolist(),
        "pixel_mean": float(train_x.mean() / 255), "pixel_std": float(train_x.std() / 255),
    }

    with tracking.start_run(cfg, "data") as run:
        out = tracking.output_dir(cfg, "data")
        pick = np.random.default_rng(cfg.seed).choice(len(train_x), size=cfg.data.sample_grid, replace=False)
        grid = plots.image_grid(train_x[pick], out / "samples.png", [classes[i] for i in train_y[pick]],
                                f"{cfg.data.name}: {cfg.data.sample_grid} random training images")
        hist = plots.class_histogram(train_counts, test_counts, classes, out / "class_histogram.png")
        (out / "stats.json").write_text(json.dumps(stats, indent=2))
        for path in (grid, hist, out / "stats.json"):
            mlflow.log_artifact(str(path), "data")
        tracking.log_dataset(cfg, train_x, train_y, "training")
        tracking.log_dataset(cfg, test_x, test_y, "test")
        mlflow.set_tag(tags.DATASET_DIGEST, digest)
        metrics = {"data/train_images": len(train_x), "data/test_images": len(test_x),
                   "data/pixel_mean": stats["pixel_mean"], "data/pixel_std": stats["pixel_std"]}
        tracking.log_metrics(metrics)

    print(f"dataset {cfg.data.name} (digest {digest}) verified in {stats['cache']}")
    print(f"  train {len(train_x)} images, test {len(test_x)}, shape {tuple(train_x.shape[1:])}, "
          f"pixel mean {stats['pixel_mean']:.4f} std {stats['pixel_std']:.4f}")
    print(f"  train class counts {train_counts.tolist()}")
    print(f"  test class counts  {test_counts.tolist()}")
    print(f"  samples: {grid}\n  histogram: {hist}\n  mlflow run: {run.info.run_id}")
    return StageResult("data", run_id=run.info.run_id, metrics=metrics,
                       artifacts={"samples": str(grid), "class_histogram": str(hist)},
                       outputs={})
