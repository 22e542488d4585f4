"""The Azure ML backend (``env.backend=azure``) through azure-ai-ml v2, as one ZenML-style "flavor":
a name (``azure``), its config (``env.azure`` for the workspace, ``azure.*`` for the rest) and its
implementation (``backend.py``), which alone imports the SDK. Importing this package is free.

Modules, one job each: ``workspace`` (settings, credential, MLClient, clear errors), ``render``
(dry-run YAML, or apply), ``compute``/``environment``/``assets``/``jobs``/``sweep``/``endpoint``/
``model`` (the SDK entities a stage creates), ``monitoring`` (the model-monitoring schedule),
``score`` (the online deployments' scoring script) and ``backend`` (the stages).
"""

from __future__ import annotations

# Stages that run mnistops code on data or models: on Azure they become a command job that runs
# this same entrypoint on the cluster, against the workspace's MLflow.
JOB_STAGES = ("data", "train", "evaluate", "register", "baseline", "validate", "gate", "tests")
# Stages that drive the workspace from here through the SDK.
CONTROL_STAGES = ("provision", "deploy", "smoke", "rollback", "cd", "promote", "endpoint")


def handles(cfg) -> bool:
    """Whether `cfg.stage` runs through this backend (`stage=monitor` calls monitoring.monitor_schedule)."""
    if cfg.env.backend != "azure":
        return False
    steps = list(cfg.stage.steps) or [cfg.stage.name]
    return all(s in JOB_STAGES for s in steps) or (len(steps) == 1 and steps[0] in CONTROL_STAGES)
