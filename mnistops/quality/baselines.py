"""Where an env keeps its quality baselines: in its tracking store, as artifacts of the newest
finished `baseline` run (the Great Expectations suite, `quality/suite.json`, and the champion's
model-quality baseline, `quality/model_baseline.json`). A fresh machine (a CI agent, an Azure ML
job) with an empty MNISTOPS_HOME and the env's tracking URI finds them; nothing lives only in a
local folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from omegaconf import DictConfig

from mnistops import tags as T

SUITE_ARTIFACT = "quality/suite.json"
MODEL_BASELINE_ARTIFACT = "quality/model_baseline.json"


def latest_baseline_run(cfg: DictConfig):
    """The newest finished baseline run of this env, or None."""
    from mnistops import tracking

    return tracking.latest_run(cfg, "baseline", finished=True)


def _artifact(cfg: DictConfig, run, path: str) -> Optional[Path]:
    import mlflow
    from mlflow.exceptions import MlflowException

    from mnistops import layout

    into = layout.downloads_cache(cfg) / f"baseline-{run.info.run_id}"
    try:
        into.mkdir(parents=True, exist_ok=True)
        return Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=path,
                                                        dst_path=str(into)))
    except (MlflowException, OSError):
        return None


def current_suite(cfg: DictConfig) -> Optional[Tuple[Any, str]]:
    """(the suite in force, the baseline run id), or None when this env has no baseline yet."""
    from mnistops.quality import load_suite

    run = latest_baseline_run(cfg)
    if run is None:
        return None
    path = _artifact(cfg, run, SUITE_ARTIFACT)
    return (load_suite(path), run.info.run_id) if path is not None else None


def model_baseline(cfg: DictConfig) -> Optional[Dict[str, Any]]:
    """The model-quality baseline (accuracy, per-class recall of the champion), or None."""
    run = latest_baseline_run(cfg)
    path = _artifact(cfg, run, MODEL_BASELINE_ARTIFACT) if run is not None else None
    return json.loads(path.read_text()) if path is not None else None


def suite_version(suite) -> str:
    return suite.meta["mnistops"]["suite_version"]


RUN_TAGS = (T.SUITE_VERSION, T.DATASET_DIGEST)
