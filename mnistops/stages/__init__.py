"""The runner for single and composite stages (the table of stages is mnistops/stage_table.py).

A stage is a module with `run(cfg) -> StageResult`. It reads its inputs by reference (run ids,
model URIs) from its own config section, and hands references to later steps through
`StageResult.outputs`: config keys that the runner sets before the next step runs. Nothing passes
between stages through hidden files or globals. Where a step runs is the flavour's job runner's
business: compute steps go to a remote runner as one job, everything else runs here.
"""

from __future__ import annotations

import copy
import importlib
from typing import List

from omegaconf import DictConfig, OmegaConf, open_dict

from mnistops.errors import MnistopsError
from mnistops.result import StageResult
from mnistops.stage_table import AGENT, COMPUTE, STAGES

__all__ = ["StageResult", "run_stage", "run_step"]


def _backend(cfg: DictConfig):
    from mnistops import backends

    return backends.get(cfg)


def run_step(name: str, cfg: DictConfig) -> StageResult:
    """One step: in this process, or as a job of a remote runner when it is a compute step."""
    if name not in STAGES or STAGES[name].steps:
        raise MnistopsError(f"unknown step {name!r} in stage.steps; steps are: "
                            f"{', '.join(n for n, s in STAGES.items() if not s.steps)}")
    if STAGES[name].runs == COMPUTE:
        runner = _backend(cfg).jobs
        if runner.remote:
            return runner.submit(cfg, [name])
    return importlib.import_module(f"mnistops.stages.{name}").run(cfg)


def _steps(cfg: DictConfig) -> List[str]:
    if cfg.stage.name not in STAGES:
        raise MnistopsError(f"stage={cfg.stage.name!r} is not a stage; stages are: {', '.join(STAGES)}")
    return list(cfg.stage.steps) or [cfg.stage.name]


def _resolve_extra_train(cfg: DictConfig) -> None:
    """`data.extra_train=[production-feedback]`: the labelled production datasets handed to this env's
    store, fetched here as files (where the steps run, so inside a remote job too)."""
    from mnistops.monitoring import production_data

    if production_data.KEYWORD in (cfg.data.extra_train or []):
        with open_dict(cfg):
            cfg.data.extra_train = [str(p) for p in production_data.extra_train_files(cfg)]


def run_stage(cfg: DictConfig) -> StageResult:
    """Run `cfg.stage`: one step alone, or its steps in order under one parent MLflow run."""
    steps = _steps(cfg)
    backend = _backend(cfg)
    cfg = copy.deepcopy(cfg)  # the steps' outputs and the flavour's tracking URI update this copy
    uri = None if cfg.env.tracking_uri else backend.tracking_uri()
    if uri:
        with open_dict(cfg):
            cfg.env.tracking_uri = uri
    if backend.jobs.remote and all(STAGES.get(s) and STAGES[s].runs in (COMPUTE, AGENT) for s in steps) \
            and any(STAGES[s].runs == COMPUTE for s in steps):
        for name in steps:  # the source checkout's tests run here, before anything is submitted
            if STAGES[name].runs == AGENT:
                run_step(name, cfg)
        return backend.jobs.submit(cfg, [s for s in steps if STAGES[s].runs == COMPUTE])
    _resolve_extra_train(cfg)
    if len(steps) == 1 and steps[0] == cfg.stage.name:
        return run_step(steps[0], cfg)

    from mnistops import tracking

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
    urls = [r.endpoint_url for r in results if r.endpoint_url]

    if cfg.stage.name == "pipeline":  # the main job ends with what to try next
        from mnistops.next_steps import after_main_job

        print(after_main_job(cfg, model_uris[-1] if model_uris else None))
    return StageResult(
        stage=cfg.stage.name,
        run_id=parent.info.run_id,
        metrics=metrics,
        artifacts={k: v for r in results for k, v in r.artifacts.items()},
        model_uri=model_uris[-1] if model_uris else None,
        score=scored[0] if scored else None,
        endpoint_url=urls[-1] if urls else None,
    )
