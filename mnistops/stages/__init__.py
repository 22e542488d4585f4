"""Stage registry and the runner for single and composite stages.

A stage is a module with `run(cfg) -> StageResult`. It reads its inputs by reference (run ids,
model URIs) from its own config section, and hands references to later steps through
`StageResult.outputs`: config keys that the runner sets before the next step runs. Nothing passes
between stages through hidden files or globals.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from omegaconf import DictConfig, OmegaConf, open_dict

from mnistops.errors import MnistopsError

STAGES = ("data", "train", "evaluate", "register", "deploy", "smoke", "rollback", "endpoint", "baseline",
          "validate", "gate", "tests", "cd", "promote", "traffic", "monitor", "provision",
          "ui")  # ui: issue 14
BACKENDS = ("local", "azure")


@dataclass
class StageResult:
    stage: str
    run_id: Optional[str] = None
    metrics: Dict[str, float] = field(default_factory=dict)
    artifacts: Dict[str, str] = field(default_factory=dict)  # name -> local path or URI
    outputs: Dict[str, Any] = field(default_factory=dict)  # config keys for the steps after this one
    model_uri: Optional[str] = None
    score: Optional[float] = None  # what a sweep optimises


def run_step(name: str, cfg: DictConfig) -> StageResult:
    if name not in STAGES:
        raise MnistopsError(f"unknown step {name!r} in stage.steps; known steps: {', '.join(STAGES)}")
    if cfg.env.backend == "azure":
        from mnistops.backends import azure

        if name in azure.JOB_STAGES or name in azure.CONTROL_STAGES:
            from mnistops.backends.azure import backend

            return backend.run_step(name, cfg)
    module = importlib.import_module(f"mnistops.stages.{name}")
    return module.run(cfg)


def run_stage(cfg: DictConfig) -> StageResult:
    """Run `cfg.stage`: one step alone, or its steps in order under one parent MLflow run."""
    if cfg.env.backend not in BACKENDS:
        raise MnistopsError(f"env.backend={cfg.env.backend!r} is not one of {', '.join(BACKENDS)}")
    steps = list(cfg.stage.steps) or [cfg.stage.name]
    if cfg.env.backend == "azure" and len(steps) > 1:
        from mnistops.backends import azure

        if azure.handles(cfg):  # a composite of job stages: one Azure ML job runs all of it
            from mnistops.backends.azure import backend

            return backend.submit(cfg)
    if len(steps) == 1 and steps[0] == cfg.stage.name:
        return run_step(steps[0], cfg)

    from mnistops import tracking

    cfg = copy.deepcopy(cfg)  # the steps' outputs update this copy, not the caller's config
    results: list[StageResult] = []
    with tracking.start_run(cfg, cfg.stage.name) as parent:
        for name in steps:
            result = run_step(name, cfg)
            results.append(result)
            with open_dict(cfg):
                for key, value in result.outputs.items():
                    OmegaConf.update(cfg, key, value, merge=False)
        metrics = {k: v for r in results for k, v in r.metrics.items()}
        tracking.log_metrics(metrics)
    scored = [r.score for r in results if r.score is not None]
    model_uris = [r.model_uri for r in results if r.model_uri]

    # -- issue 14: the main job ends with what to try next ---------------------------------------
    if cfg.stage.name == "pipeline":
        from mnistops.next_steps import after_main_job

        print(after_main_job(cfg, model_uris[-1] if model_uris else None))
    # --------------------------------------------------------------------------------------------
    return StageResult(
        stage=cfg.stage.name,
        run_id=parent.info.run_id,
        metrics=metrics,
        artifacts={k: v for r in results for k, v in r.artifacts.items()},
        model_uri=model_uris[-1] if model_uris else None,
        score=scored[0] if scored else None,
    )
