"""After a multirun: find the best trial among the sweep's child runs, report it and record it on
the sweep's parent run (tags, metric, best_config.yaml) and in the sweep dir (best.yaml)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow.tracking import MlflowClient

        from mnistops import tags, tracking

        sweep_dir = os.path.abspath(config.hydra.sweep.dir)
        experiment_id = tracking.configure(config)
        client = MlflowClient()
        found = client.search_runs([experiment_id], filter_string=f"tags.`{tags.SWEEP_DIR}` = '{sweep_dir}'")
        if not found:
            return
        parent = found[0].info.run_id
        metric = config.optimized_metric
        direction = OmegaConf.select(config, "hydra.sweeper.direction", default="maximize")
        maximize = str(direction).lower().startswith("max")
        trials = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
        scored = [r for r in trials if metric in r.data.metrics]
        if not scored:
            client.set_terminated(parent, "FAILED")
            print(f"sweep {sweep_dir}: no trial logged {metric}")
            return
        best = (max if maximize else min)(scored, key=lambda r: r.data.metrics[metric])
        overrides = best.data.tags.get(tags.OVERRIDES, "")
        summary = {"metric": metric, "direction": "maximize" if maximize else "minimize",
                   "best_value": best.data.metrics[metric], "best_run_id": best.info.run_id,
                   "best_overrides": overrides.split(" ") if overrides else [], "trials": len(trials)}
        client.set_tag(parent, tags.BEST_RUN_ID, best.info.run_id)
        client.set_tag(parent, tags.BEST_OVERRIDES, overrides)
        client.log_metric(parent, f"best/{metric}", best.data.metrics[metric])
        client.log_text(parent, OmegaConf.to_yaml(summary), "best_config.yaml")
        client.set_terminated(parent, "FINISHED")
        Path(sweep_dir, "best.yaml").write_text(OmegaConf.to_yaml(summary))
        print(f"best of {len(trials)} trials: {metric}={summary['best_value']:.4f} with {overrides or '(defaults)'} "
              f"(run {best.info.run_id}; {Path(sweep_dir, 'best.yaml')})")
