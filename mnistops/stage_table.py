"""The stages there are: one table, the single source of their names, what each does, where it runs
and (composites) its ordered steps. The `stage` config group (config.py), the CLI help and the runner
(stages/__init__.py) come from it; each stage's body is mnistops/stages/<name>.py.

Where a stage runs:
  compute   it needs the data and the compute: it runs in this process, or, on a flavour whose job
            runner is remote (Azure ML), inside one submitted job
  here      it drives the env's stores and endpoint from this machine through the flavour's
            interfaces (registry, endpoint, monitoring schedule)
  agent     it needs the source checkout (the `tests` step of `ci`): always on this machine, first
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

COMPUTE, HERE, AGENT = "compute", "here", "agent"


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    runs: str = HERE
    steps: Tuple[str, ...] = ()  # composites: the steps, in order, under one parent run
    endpoint: bool = False  # acts on the env's endpoint (its result names the endpoint's URL)


_TABLE = (
    Stage("data", "fetch from data.mirrors, verify, cache; sample grid, class histogram, dataset in MLflow", COMPUTE),
    Stage("train", "Lightning training of model on data; an MLflow run with params, metrics, checkpoints", COMPUTE),
    Stage("evaluate", "the performance matrix on the official test set (accuracy, per class, confusion matrix)",
          COMPUTE),
    Stage("register", "register the evaluated model with lineage in the env's registry, alias @candidate", COMPUTE),
    Stage("pipeline", "the main job: data -> train -> evaluate -> register", COMPUTE,
          steps=("data", "train", "evaluate", "register")),
    Stage("baseline", "data-quality suite (Great Expectations) and model-quality baseline, in the env's store",
          COMPUTE),
    Stage("validate", "check a batch (validate.batch) against the env's baseline suite", COMPUTE),
    Stage("gate", "champion/challenger: @candidate becomes @champion only if it is not worse", COMPUTE),
    Stage("tests", "the project's unit tests (ci.pytest_args), from the source checkout", AGENT),
    Stage("ci", "the CI pipeline: data -> validate -> tests -> train -> evaluate -> register -> baseline -> gate",
          COMPUTE, steps=("data", "validate", "tests", "train", "evaluate", "register", "baseline", "gate")),
    Stage("deploy", "serve a registered version (deploy.model) on the env's endpoint, blue/green", endpoint=True),
    Stage("smoke", "labelled test images as web requests against the endpoint; fails loudly", endpoint=True),
    Stage("rollback", "restore the endpoint's previous deployments and traffic", endpoint=True),
    Stage("cd", "deploy the env's @champion (cd.canary: judged on live traffic first) -> smoke test -> roll back "
          "on failure", endpoint=True),
    Stage("canary", "deploy.model in the idle deployment on mirrored live traffic vs the champion -> promote / "
          "hold (exit 3) / reject (exit 2)", endpoint=True),
    Stage("endpoint", "endpoint.action=status|stop|regenerate-keys for the env's endpoint", endpoint=True),
    Stage("promote", "copy the source env's approved, smoke-tested version into this env's registry"),
    Stage("traffic", "simulated traffic: real (optionally shifted) test images with feedback", endpoint=True),
    Stage("monitor", "drift, data quality, model quality and system signals -> report, alerts, retraining"),
    Stage("batch", "score batch.input (a folder of pictures, .npz, .parquet) into batch.output with batch.model, "
                   "on every core (Azure: a batch endpoint)"),
    Stage("provision", "what the env needs before jobs run (Azure ML: environments, data assets)"),
    Stage("ui", "the MLflow UI on the env's store: runs, metrics, plots, the registry with aliases and lineage"),
)
STAGES: Dict[str, Stage] = {s.name: s for s in _TABLE}  # in the order the help lists them


def steps_of(name: str) -> Tuple[str, ...]:
    return STAGES[name].steps or (name,)


def help_text() -> str:
    """The stage table for `--help`."""
    width = max(len(n) for n in STAGES)
    return "\n".join(f"  {s.name:<{width}}  {s.summary}" for s in STAGES.values())

